#include "runtime/collective_call.h"

#include <algorithm>
#include <vector>

namespace tessel::runtime {

std::string ranks_str(std::span<const int64_t> ranks) {
  std::string s = "[";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? "," : "") + std::to_string(ranks[i]);
  return s + "]";
}

namespace {

std::string bad_dim(const TensorRef& t, int dim, std::string_view op) {
  if (dim >= 0 && dim < t.rank()) return "";
  return std::string(op) + ": dim " + std::to_string(dim) + " is out of range for " + shape_str(t.shape);
}

std::string bad_out(const TensorRef& in, const TensorRef& out, const std::vector<int64_t>& want, std::string_view op) {
  if (out.dtype == in.dtype && std::equal(want.begin(), want.end(), out.shape.begin(), out.shape.end())) return "";
  return std::string(op) + ": the output is " + std::string(dtype_name(out.dtype)) + shape_str(out.shape) + ", expected " +
         std::string(dtype_name(in.dtype)) + shape_str(want);
}

std::string bad_split(const TensorRef& in, int dim, int64_t k, std::string_view op) {
  if (k > 0 && in.shape[static_cast<size_t>(dim)] % k == 0) return "";
  return std::string(op) + ": dim " + std::to_string(dim) + " of " + shape_str(in.shape) + " does not split over " +
         std::to_string(k) + " ranks";
}

}  // namespace

std::string malformed_all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out) {
  if (in.size() != out.size())
    return "all_reduce: " + std::to_string(in.size()) + " inputs but " + std::to_string(out.size()) + " outputs";
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i].numel != out[i].numel || in[i].dtype != out[i].dtype || (i && in[i].dtype != in[0].dtype))
      return "all_reduce: tensor " + std::to_string(i) + " in and out differ in size or dtype";
  return "";
}

std::string malformed_reduce_scatter(const TensorRef& in, const TensorRef& out, int dim, int64_t k) {
  std::string e = bad_dim(in, dim, "reduce_scatter");
  if (e.empty()) e = bad_split(in, dim, k, "reduce_scatter");
  if (!e.empty()) return e;
  std::vector<int64_t> want(in.shape.begin(), in.shape.end());
  want[static_cast<size_t>(dim)] /= k;
  return bad_out(in, out, want, "reduce_scatter");
}

std::string malformed_all_gather(const TensorRef& in, const TensorRef& out, int dim, int64_t k) {
  if (std::string e = bad_dim(in, dim, "all_gather"); !e.empty()) return e;
  std::vector<int64_t> want(in.shape.begin(), in.shape.end());
  want[static_cast<size_t>(dim)] *= k;
  return bad_out(in, out, want, "all_gather");
}

std::string malformed_all_to_all(const TensorRef& in, const TensorRef& out, int split_dim, int concat_dim, int64_t k) {
  std::string e = bad_dim(in, split_dim, "all_to_all");
  if (e.empty()) e = bad_dim(in, concat_dim, "all_to_all");
  if (e.empty()) e = bad_split(in, split_dim, k, "all_to_all");
  if (!e.empty()) return e;
  std::vector<int64_t> want(in.shape.begin(), in.shape.end());
  want[static_cast<size_t>(split_dim)] /= k;
  want[static_cast<size_t>(concat_dim)] *= k;
  return bad_out(in, out, want, "all_to_all");
}

std::string malformed_broadcast(const TensorRef& in, const TensorRef& out, int64_t root, int64_t k) {
  if (root < 0 || root >= k) return "broadcast: root " + std::to_string(root) + " is not in a group of " + std::to_string(k);
  return bad_out(in, out, std::vector<int64_t>(in.shape.begin(), in.shape.end()), "broadcast");
}

std::string malformed_peer(int64_t peer, int64_t rank, int64_t size, std::string_view op) {
  if (peer >= 0 && peer < size && peer != rank) return "";
  return std::string(op) + ": peer " + std::to_string(peer) + " is not another rank of this world of " + std::to_string(size);
}

}  // namespace tessel::runtime
