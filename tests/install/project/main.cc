// Trains y = 2x + 1 with a one-layer model on 2 simulated devices and on one, from the
// installed headers and libraries only.
#include <cmath>
#include <cstdio>
#include <vector>

#include "frontend/api.h"
#include "frontend/nn.h"

int main() {
  using namespace tessel;
  Model m;
  Tensor x = m.input("x", {8, 1}, DType::f32, "data");
  Tensor y = m.input("y", {8, 1}, DType::f32, "targets");
  nn::Linear fc(m, "fc", 1, 1);
  Tensor loss = mse_loss(fc(x), y);
  Trainer two(m, loss, SGD{.lr = 0.1}, Devices{.count = 2});
  Trainer one(m, loss, SGD{.lr = 0.1});
  std::vector<float> xs(8), ys(8);
  double l2 = 0, l1 = 0;
  for (int s = 0; s < 200; ++s) {
    for (int i = 0; i < 8; ++i) xs[i] = static_cast<float>((s * 8 + i) % 13) / 13.0f, ys[i] = 2 * xs[i] + 1;
    const Batch b = Batch().set("x", xs).set("y", ys);
    l2 = two.step(b);
    l1 = one.step(b);
  }
  const std::vector<float> w = two.parameter("fc/weight");
  std::printf("%s", two.report().c_str());
  std::printf("loss %.3g (one device %.3g), weight %.4f\n", l2, l1, w[0]);
  return std::fabs(w[0] - 2) < 0.05 && std::fabs(l2 - l1) < 1e-4 + 1e-3 * l1 ? 0 : 1;
}
