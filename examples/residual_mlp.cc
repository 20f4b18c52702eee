// A model of the user's own, not a transformer: an MLP whose hidden layers add their input back
// (x + relu(linear(layernorm(x)))), trained on Fashion-MNIST on 4 simulated devices with a
// searched plan, and on one device, from the same start: the two agree.
//
//   residual_mlp [STEPS] [FASHION_MNIST_DIR]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <vector>

#include "frontend/api.h"
#include "frontend/nn.h"
#include "runtime/data.h"

using namespace tessel;

namespace {

struct Net {
  Model m;
  Tensor loss;
  Net(int64_t batch, int64_t hidden, int64_t depth) {
    Tensor x = m.input("pixels", {batch, 784}, DType::f32, "data");
    Tensor labels = m.input("classes", {batch}, DType::i32, "labels");
    nn::Linear in(m, "in", 784, hidden);
    Tensor h = relu(in(x));
    for (int64_t i = 0; i < depth; ++i) {
      nn::LayerNorm norm(m, "res" + std::to_string(i) + "_norm", hidden);
      nn::Linear fc(m, "res" + std::to_string(i), hidden, hidden);
      h = h + relu(fc(norm(h)));
    }
    nn::Linear out(m, "out", hidden, 10);
    loss = cross_entropy(out(h), labels);
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const int64_t steps = argc > 1 ? std::atoll(argv[1]) : 50;
    const runtime::TrainTest data = runtime::load_fashion_mnist(argc > 2 ? argv[2] : runtime::kFashionMnistDir);
    const int64_t batch = 64;
    Net net(batch, 128, 3);
    Trainer four(net.m, net.loss, SGD{.lr = 0.05, .momentum = 0.9}, Devices{.count = 4});
    Trainer one(net.m, net.loss, SGD{.lr = 0.05, .momentum = 0.9});
    std::cout << four.report();

    runtime::BatchSampler sampler(data.train.count, batch, 7);
    std::vector<float> pixels(batch * 784);
    std::vector<int32_t> classes(batch);
    double worst = 0, loss = 0;
    for (int64_t s = 0; s < steps; ++s) {
      auto idx = sampler.batch(s % sampler.batches_per_epoch());
      runtime::gather_images(data.train, idx, pixels.data());
      runtime::gather_labels(data.train, idx, classes.data());
      const Batch b = Batch().set("pixels", pixels).set("classes", classes);
      loss = four.step(b);
      const double ref = one.step(b);
      worst = std::max(worst, std::fabs(loss - ref) / std::fabs(ref));
      if ((s + 1) % 10 == 0) std::printf("step %lld: loss %.4f (one device %.4f)\n", static_cast<long long>(s + 1), loss, ref);
    }
    std::printf("largest relative difference from one device: %.2g\n", worst);
    return worst < 1e-3 && loss < 1.0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "residual_mlp: " << e.what() << "\n";
    return 1;
  }
}
