// Graph files: exact round trips (binary and text) and hostile input. Uses a small fake
// registry so that graph/ is tested without the ops layer.
#include "graph/serialize.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include "graph/error.h"
#include "graph/graph.pb.h"

namespace tessel {
namespace {

// ---- a fake registry --------------------------------------------------------------------

void no_kernel(const Node&, std::span<const TensorRef>, std::span<const TensorRef>,
               const KernelCtx&) {}

std::vector<TensorType> infer_source(const Node& n, std::span<const TensorType>) {
  auto dt = parse_dtype(n.attrs.get_str("dtype"));
  if (!dt) throw Error("unknown dtype '" + n.attrs.get_str("dtype") + "'");
  return {TensorType{*dt, n.attrs.get_i64s("shape")}};
}

std::vector<TensorType> infer_add(const Node&, std::span<const TensorType> in) {
  if (in[0] != in[1]) throw Error("input types differ");
  return {in[0]};
}

std::vector<TensorType> infer_same(const Node&, std::span<const TensorType> in) { return {in[0]}; }

std::vector<TensorType> infer_split2(const Node&, std::span<const TensorType> in) {
  return {in[0], in[0]};
}

std::vector<TensorType> infer_matmul(const Node&, std::span<const TensorType> in) {
  if (in[0].rank() != 2 || in[1].rank() != 2) throw Error("matmul needs rank-2 inputs");
  if (in[0].shape[1] != in[1].shape[0])
    throw Error("inner dims differ: " + in[0].str() + " x " + in[1].str());
  return {TensorType{in[0].dtype, {in[0].shape[0], in[1].shape[1]}}};
}

const OpRegistry& fake_registry() {
  static const OpRegistry reg = [] {
    OpRegistry r;
    auto add = [&](std::string name, OpKind kind, int min_in, int max_in,
                   std::vector<AttrSpec> attrs, InferFn infer) {
      OpDef d;
      d.name = std::move(name);
      d.kind = kind;
      d.min_inputs = min_in;
      d.max_inputs = max_in;
      d.attrs = std::move(attrs);
      d.infer = infer;
      d.kernel = &no_kernel;
      r.add(std::move(d));
    };
    add("input", OpKind::input, 0, 0, {{"dtype", AttrType::string}, {"shape", AttrType::i64s}},
        &infer_source);
    add("parameter", OpKind::variable, 0, 0,
        {{"dtype", AttrType::string},
         {"shape", AttrType::i64s},
         {"trainable", AttrType::boolean, false}},
        &infer_source);
    add("constant", OpKind::constant, 0, 0,
        {{"dtype", AttrType::string}, {"shape", AttrType::i64s}}, &infer_source);
    add("add", OpKind::compute, 2, 2, {}, &infer_add);
    add("matmul", OpKind::compute, 2, 2, {}, &infer_matmul);
    add("scale", OpKind::compute, 1, 1,
        {{"factor", AttrType::f64},
         {"table", AttrType::f64s, false},
         {"axis", AttrType::i64, false},
         {"note", AttrType::string, false}},
        &infer_same);
    add("split2", OpKind::compute, 1, 1, {}, &infer_split2);
    return r;
  }();
  return reg;
}

// ---- helpers ----------------------------------------------------------------------------

template <class T>
std::vector<std::byte> bytes_of(const std::vector<T>& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Attrs source_attrs(std::string dtype, Shape shape, std::optional<bool> trainable = {}) {
  Attrs a{{"dtype", std::move(dtype)}, {"shape", std::move(shape)}};
  if (trainable) a.set("trainable", *trainable);
  return a;
}

// A small MLP-like graph that uses every attribute type, a two-output op, outputs,
// updates, DSL and empty origins, and data with awkward bit patterns.
Graph sample_graph() {
  Graph g(fake_registry());
  Value x = g.add("input", {}, source_attrs("f32", {4, 8}), "x", Origin::here());
  Value w1 = g.add("parameter", {}, source_attrs("f32", {8, 16}, true), "fc1/w", Origin::here());
  Value h = g.add("matmul", {x, w1}, {}, "fc1/matmul", Origin::here());
  Value b = g.add("parameter", {}, source_attrs("f32", {4, 16}, true), "fc1/b");  // no origin
  Value hb = g.add("add", {h, b}, {}, "fc1/add", Origin::here());
  Value s = g.add("scale", {hb},
                  {{"factor", 0.1},
                   {"table", std::vector<double>{1e-300, -0.0, 5e-324, 1.7976931348623157e308,
                                                 std::numeric_limits<double>::infinity(),
                                                 -std::numeric_limits<double>::infinity(),
                                                 0.30000000000000004}},
                   {"axis", int64_t{-1}},
                   {"note", std::string("h\xc3\xa9llo \"quoted\"\n")}},
                  "scale", Origin::here());
  int32_t sp = g.add_node("split2", {s}, {}, "split", Origin::here());
  Value p64 = g.add("parameter", {}, source_attrs("f64", {4}, false), "p64", Origin::here());
  Value empty = g.add("constant", {}, source_attrs("i32", {0, 3}), "empty");
  Value w1_new = g.add("add", {w1, w1}, {}, "fc1/w_new", Origin::here());
  g.add("scale", {x}, {{"factor", 2.0}, {"table", std::vector<double>{}}}, "no_table");

  std::vector<float> wf(8 * 16);
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = static_cast<float>(i) * 0.37f - 3.0f;
  wf[0] = -0.0f;
  wf[1] = std::bit_cast<float>(uint32_t{0x7fc01234});  // NaN with a payload
  wf[2] = std::bit_cast<float>(uint32_t{0xffa00001});  // signalling NaN, negative
  wf[3] = std::numeric_limits<float>::denorm_min();
  g.set_data(w1.node, bytes_of(wf));
  g.set_data(p64.node,
             bytes_of(std::vector<double>{
                 0.1, -0.0, std::bit_cast<double>(uint64_t{0x7ff8deadbeef0001}), 1e-300}));
  g.set_data(empty.node, {});
  g.set_output("y", s);
  g.set_output("half", Value{sp, 1});
  g.add_update(w1.node, w1_new, "train");
  return g;
}

// Attrs compare doubles by value; a round trip must keep their bits.
bool same_bits(const AttrValue& a, const AttrValue& b) {
  if (a.index() != b.index()) return false;
  if (auto* d = std::get_if<double>(&a))
    return std::bit_cast<uint64_t>(*d) == std::bit_cast<uint64_t>(std::get<double>(b));
  if (auto* v = std::get_if<std::vector<double>>(&a)) {
    auto& w = std::get<std::vector<double>>(b);
    return v->size() == w.size() &&
           (v->empty() || std::memcmp(v->data(), w.data(), v->size() * sizeof(double)) == 0);
  }
  return a == b;
}

void expect_same_graph(const Graph& a, const Graph& b, const std::string& loaded_from) {
  ASSERT_EQ(a.size(), b.size());
  for (int32_t i = 0; i < a.size(); ++i) {
    const Node& x = a.node(i);
    const Node& y = b.node(i);
    SCOPED_TRACE(x.name);
    EXPECT_EQ(x.op, y.op);
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.inputs, y.inputs);
    EXPECT_EQ(x.outputs, y.outputs);
    EXPECT_EQ(x.origin.empty() ? Origin::from_file(loaded_from) : x.origin, y.origin);
    ASSERT_EQ(x.attrs.items().size(), y.attrs.items().size());
    for (size_t k = 0; k < x.attrs.items().size(); ++k) {
      EXPECT_EQ(x.attrs.items()[k].first, y.attrs.items()[k].first);
      EXPECT_TRUE(same_bits(x.attrs.items()[k].second, y.attrs.items()[k].second))
          << x.attrs.items()[k].first;
    }
    const auto* dx = a.data(i);
    const auto* dy = b.data(i);
    ASSERT_EQ(dx == nullptr, dy == nullptr);
    if (dx) {
      EXPECT_EQ(*dx, *dy);  // std::byte compare: bit-exact
    }
  }
  ASSERT_EQ(a.outputs().size(), b.outputs().size());
  for (size_t k = 0; k < a.outputs().size(); ++k) {
    EXPECT_EQ(a.outputs()[k].name, b.outputs()[k].name);
    EXPECT_EQ(a.outputs()[k].value, b.outputs()[k].value);
  }
  ASSERT_EQ(a.updates().size(), b.updates().size());
  for (size_t k = 0; k < a.updates().size(); ++k) {
    EXPECT_EQ(a.updates()[k].variable, b.updates()[k].variable);
    EXPECT_EQ(a.updates()[k].value, b.updates()[k].value);
    EXPECT_EQ(a.updates()[k].phase, b.updates()[k].phase);
  }
}

std::string error_of(std::string_view bytes, const std::string& name = "hostile.tsg") {
  try {
    parse_graph(bytes, fake_registry(), name);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

proto::GraphProto sample_proto() {
  proto::GraphProto gp;
  EXPECT_TRUE(gp.ParseFromString(serialize_graph(sample_graph())));
  return gp;
}

std::string bin(const proto::GraphProto& gp) { return gp.SerializeAsString(); }

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("tessel_serialize_test." + std::to_string(::getpid()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// ---- round trips ------------------------------------------------------------------------

TEST(Serialize, BinaryRoundTripIsExact) {
  Graph g = sample_graph();
  std::string a = serialize_graph(g);
  Graph g2 = parse_graph(a, fake_registry(), "mlp.tsg");
  g2.verify();
  expect_same_graph(g, g2, "mlp.tsg");
  EXPECT_EQ(a, serialize_graph(g2));
  // Loading from another path changes nothing in the bytes.
  EXPECT_EQ(a, serialize_graph(parse_graph(a, fake_registry(), "elsewhere/other.tsg")));
}

TEST(Serialize, TextRoundTripIsExact) {
  Graph g = sample_graph();
  std::string t = serialize_graph(g, {.text = true});
  EXPECT_TRUE(t.starts_with("format: \"tessel.graph\"")) << t.substr(0, 40);
  Graph g2 = parse_graph(t, fake_registry(), "mlp.tsg.txt");
  g2.verify();
  expect_same_graph(g, g2, "mlp.tsg.txt");
  EXPECT_EQ(t, serialize_graph(g2, {.text = true}));
  EXPECT_EQ(serialize_graph(g), serialize_graph(g2));  // text and binary agree
}

TEST(Serialize, WithoutData) {
  Graph g = sample_graph();
  for (bool text : {false, true}) {
    std::string a = serialize_graph(g, {.with_data = false, .text = text});
    Graph g2 = parse_graph(a, fake_registry(), "nodata.tsg");
    g2.verify();
    EXPECT_TRUE(g2.all_data().empty());
    EXPECT_EQ(a, serialize_graph(g2, {.with_data = true, .text = text}));
    g.clear_data();
    expect_same_graph(g, g2, "nodata.tsg");
    g = sample_graph();
  }
}

TEST(Serialize, DoublesKeepTheirBits) {
  const std::vector<double> awkward = {0.1,
                                       1e-300,
                                       -0.0,
                                       5e-324,
                                       2.2250738585072014e-308,
                                       1.7976931348623157e308,
                                       0.30000000000000004,
                                       1.0 / 3.0,
                                       -123456789.123456789,
                                       9007199254740993.0};
  for (bool text : {false, true}) {
    Graph g(fake_registry());
    Value x = g.add("input", {}, source_attrs("f64", {2}), "x");
    for (size_t i = 0; i < awkward.size(); ++i)
      g.add("scale", {x}, {{"factor", awkward[i]}, {"table", awkward}}, "s" + std::to_string(i));
    if (!text) {  // text prints NaN as "nan": only binary keeps a NaN's payload
      g.add("scale", {x}, {{"factor", std::bit_cast<double>(uint64_t{0xfff0000000000abc})}},
            "snan");
    }
    std::string a = serialize_graph(g, {.text = text});
    Graph g2 = parse_graph(a, fake_registry(), "d.tsg");
    expect_same_graph(g, g2, "d.tsg");
    EXPECT_EQ(a, serialize_graph(g2, {.text = text}));
  }
}

TEST(Serialize, SaveAndLoadFiles) {
  TempDir dir;
  Graph g = sample_graph();
  for (bool text : {false, true}) {
    std::string path = dir.file(text ? "mlp.tsg.txt" : "mlp.tsg");
    save_graph(g, path, {.text = text});
    for (auto& e : std::filesystem::directory_iterator(std::filesystem::path(path).parent_path()))
      EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
    Graph g2 = load_graph(path, fake_registry());
    g2.verify();
    expect_same_graph(g, g2, path);
    std::ifstream in(path, std::ios::binary);
    std::string on_disk((std::istreambuf_iterator<char>(in)), {});
    EXPECT_EQ(on_disk, serialize_graph(g, {.text = text}));
  }
  try {
    save_graph(g, dir.file("no/such/dir/x.tsg"));
    FAIL() << "saved into a missing directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/dir/x.tsg"), std::string::npos) << e.what();
  }
  for (const std::string& bad : {dir.file("missing.tsg"), dir.file("")}) {
    try {
      load_graph(bad, fake_registry());
      FAIL() << "loaded " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(Serialize, NodesWithoutOriginGetTheFileName) {
  Graph g(fake_registry());
  g.add("input", {}, source_attrs("f32", {2, 3}), "x");
  g.add("parameter", {}, source_attrs("f32", {3, 5}), "w", Origin::here());
  std::string a = serialize_graph(g);
  proto::GraphProto gp;
  ASSERT_TRUE(gp.ParseFromString(a));
  EXPECT_FALSE(gp.nodes(0).has_origin());
  EXPECT_TRUE(gp.nodes(1).has_origin());
  Graph g2 = parse_graph(a, fake_registry(), "dir/m.tsg");
  EXPECT_EQ(g2.node(0).origin, Origin::from_file("dir/m.tsg"));
  EXPECT_EQ(g2.node(1).origin, g.node(1).origin);
  // A later error on a loaded node points at the file it came from.
  try {
    g2.add("matmul", {Value{1, 0}, Value{0, 0}}, {}, "mm", Origin::here());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inner dims differ"), std::string::npos) << e.what();
  }
  EXPECT_EQ(g2.node(0).where(), "m.tsg: input 'x'");
}

TEST(Serialize, NodesOutOfOrderLoad) {
  proto::GraphProto gp = sample_proto();
  const int n = gp.nodes_size();
  // Reverse the nodes and remap every reference.
  auto remap = [&](int32_t i) { return n - 1 - i; };
  proto::GraphProto r = gp;
  r.clear_nodes();
  for (int i = n - 1; i >= 0; --i) *r.add_nodes() = gp.nodes(i);
  for (auto& node : *r.mutable_nodes())
    for (auto& in : *node.mutable_inputs()) in.set_node(remap(in.node()));
  for (auto& o : *r.mutable_outputs()) o.mutable_value()->set_node(remap(o.value().node()));
  for (auto& u : *r.mutable_updates()) {
    u.set_variable(remap(u.variable()));
    u.mutable_value()->set_node(remap(u.value().node()));
  }
  Graph g = parse_graph(bin(r), fake_registry(), "reversed.tsg");
  g.verify();
  Graph want = sample_graph();
  ASSERT_EQ(g.size(), want.size());
  for (const Node& node : want.nodes()) {
    auto id = g.find(node.name);
    ASSERT_TRUE(id) << node.name;
    EXPECT_EQ(g.node(*id).outputs, node.outputs);
    for (size_t k = 0; k < node.inputs.size(); ++k)
      EXPECT_EQ(g.node(g.node(*id).inputs[k].node).name, want.node(node.inputs[k].node).name);
    if (want.data(node.id)) {
      EXPECT_EQ(*g.data(*id), *want.data(node.id));
    }
  }
  EXPECT_EQ(g.node(g.output("half")->node).name, "split");
  EXPECT_EQ(g.output("half")->index, 1);
  EXPECT_EQ(g.node(g.updates()[0].variable).name, "fc1/w");
  // Once sorted, saving and loading again is stable.
  std::string a = serialize_graph(g);
  EXPECT_EQ(a, serialize_graph(parse_graph(a, fake_registry(), "x.tsg")));
}

// ---- hostile input ----------------------------------------------------------------------

struct Hostile {
  std::string name;
  std::string bytes;
  std::string expect;  // a substring of the error
};

proto::NodeProto* by_name(proto::GraphProto& gp, std::string_view name) {
  for (auto& n : *gp.mutable_nodes())
    if (n.name() == name) return &n;
  ADD_FAILURE() << "no node " << name;
  return gp.mutable_nodes(0);
}

std::vector<Hostile> hostile_cases() {
  std::vector<Hostile> cases;
  auto edit = [&](std::string name, std::string expect,
                  const std::function<void(proto::GraphProto&)>& f) {
    proto::GraphProto gp = sample_proto();
    f(gp);
    cases.push_back({std::move(name), bin(gp), std::move(expect)});
  };
  auto dims = [](proto::NodeProto* n, std::vector<int64_t> d) {
    n->mutable_outputs(0)->clear_dims();
    for (int64_t x : d) n->mutable_outputs(0)->add_dims(x);
    proto::AttrProto a;
    for (int64_t x : d) a.mutable_ints()->add_values(x);
    (*n->mutable_attrs())["shape"] = a;
  };
  edit("wrong magic", "format is 'tessel.grph'", [](auto& gp) { gp.set_format("tessel.grph"); });
  edit("no magic", "format field is missing", [](auto& gp) { gp.clear_format(); });
  edit("no version", "format_version is missing", [](auto& gp) { gp.set_format_version(0); });
  edit("future version", "format version 2 is newer", [](auto& gp) { gp.set_format_version(2); });
  edit("no end marker", "truncated", [](auto& gp) { gp.clear_end_marker(); });
  edit("unknown op", "unknown op 'frobnicate'",
       [](auto& gp) { by_name(gp, "fc1/add")->set_op("frobnicate"); });
  edit("no op", "op is missing", [](auto& gp) { by_name(gp, "fc1/add")->clear_op(); });
  edit("no name", "name is missing", [](auto& gp) { by_name(gp, "fc1/add")->clear_name(); });
  edit("duplicate name", "node 4 'x' (add, serialize_test.cc:", [](auto& gp) {
    by_name(gp, "fc1/add")->set_name("x");
  });
  edit("unknown attribute", "unknown attribute 'bogus'",
       [](auto& gp) { (*by_name(gp, "scale")->mutable_attrs())["bogus"].set_i(1); });
  edit("wrong attribute type", "attribute 'factor' is int, expected float",
       [](auto& gp) { (*by_name(gp, "scale")->mutable_attrs())["factor"].set_i(1); });
  edit("attribute without value", "attribute 'factor' has no value",
       [](auto& gp) { (*by_name(gp, "scale")->mutable_attrs())["factor"].Clear(); });
  edit("missing attribute", "missing attribute 'factor'",
       [](auto& gp) { by_name(gp, "scale")->mutable_attrs()->erase("factor"); });
  edit("wrong declared dtype", "declared output types",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_outputs(0)->set_dtype(proto::DTYPE_F64); });
  edit("no dtype", "output 0 has no dtype",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_outputs(0)->clear_dtype(); });
  edit("unknown dtype", "unknown dtype 99", [](auto& gp) {
    by_name(gp, "fc1/add")->mutable_outputs(0)->set_dtype(static_cast<proto::DType>(99));
  });
  edit("wrong declared shape", "differ from inferred",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_outputs(0)->set_dims(0, 5); });
  edit("missing declared output", "differ from inferred",
       [](auto& gp) { by_name(gp, "fc1/add")->clear_outputs(); });
  edit("2^62 elements", "more than 2^48 elements", [&](auto& gp) {
    dims(by_name(gp, "x"), {int64_t{1} << 31, int64_t{1} << 31});
  });
  edit("huge dim with a zero", "dimension over 2^48", [&](auto& gp) {
    dims(by_name(gp, "x"), {0, int64_t{1} << 62});
  });
  edit("int64 overflow", "more than 2^48 elements", [&](auto& gp) {
    dims(by_name(gp, "x"), {std::numeric_limits<int64_t>::max(), 3});
  });
  edit("negative dim", "negative dimension", [&](auto& gp) { dims(by_name(gp, "x"), {4, -8}); });
  edit("rank 9", "rank 9", [&](auto& gp) { dims(by_name(gp, "x"), {1, 1, 1, 1, 1, 1, 1, 1, 1}); });
  edit("attr shape absurd, declared sane", "2^48", [](auto& gp) {
    auto* a = (*by_name(gp, "x")->mutable_attrs())["shape"].mutable_ints();
    a->set_values(0, int64_t{1} << 40);
    a->set_values(1, int64_t{1} << 40);
  });
  edit("input out of range", "input 1 refers to node 99, which does not exist",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_inputs(1)->set_node(99); });
  edit("negative input", "input 0 refers to node -1",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_inputs(0)->set_node(-1); });
  edit("output index out of range", "refers to output 3 of 'fc1/matmul'",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_inputs(0)->set_output(3); });
  edit("negative output index", "refers to output -2",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_inputs(0)->set_output(-2); });
  edit("too many inputs", "takes 2 inputs, got 3",
       [](auto& gp) { by_name(gp, "fc1/add")->add_inputs(); });
  edit("self reference", "cycle through 'fc1/add' -> 'fc1/add'",
       [](auto& gp) { by_name(gp, "fc1/add")->mutable_inputs(0)->set_node(4); });
  edit("cycle", "cycle through 'fc1/matmul' -> 'fc1/add' -> 'fc1/matmul'",
       [](auto& gp) { by_name(gp, "fc1/matmul")->mutable_inputs(0)->set_node(4); });
  edit("inner dims differ", "node 2 'fc1/matmul' (matmul, serialize_test.cc:", [&](auto& gp) {
    dims(by_name(gp, "x"), {4, 9});
  });
  edit("data on an input", "only variables and constants",
       [](auto& gp) { by_name(gp, "x")->set_data(std::string(128, '\0')); });
  edit("data on a compute node", "only variables and constants",
       [](auto& gp) { by_name(gp, "fc1/add")->set_data(std::string(256, '\0')); });
  edit("data too short", "data has 511 bytes, f32[8,16] needs 512",
       [](auto& gp) { by_name(gp, "fc1/w")->mutable_data()->pop_back(); });
  edit("data too long", "data has 33 bytes, f64[4] needs 32",
       [](auto& gp) { by_name(gp, "p64")->mutable_data()->push_back('x'); });
  edit("update of a non-variable", "only variables can be updated",
       [](auto& gp) { gp.mutable_updates(0)->set_variable(0); });
  edit("update out of range", "update 0 refers to node 1000",
       [](auto& gp) { gp.mutable_updates(0)->set_variable(1000); });
  edit("update with the wrong type", "update value", [](auto& gp) {
    gp.mutable_updates(0)->mutable_value()->set_node(2);  // fc1/matmul, f32[4,16]
  });
  edit("update twice", "updated twice in phase 'train'",
       [](auto& gp) { *gp.add_updates() = gp.updates(0); });
  edit("update without value", "value is missing",
       [](auto& gp) { gp.mutable_updates(0)->clear_value(); });
  edit("dangling output", "output 0 'y' refers to node 77",
       [](auto& gp) { gp.mutable_outputs(0)->mutable_value()->set_node(77); });
  edit("output of a missing index", "has no output 5",
       [](auto& gp) { gp.mutable_outputs(0)->mutable_value()->set_output(5); });
  edit("duplicate output name", "duplicate output name",
       [](auto& gp) { gp.mutable_outputs(1)->set_name("y"); });
  edit("unnamed output", "name is missing", [](auto& gp) { gp.mutable_outputs(1)->clear_name(); });
  edit("name with a newline", "'fc1\\nadd'", [](auto& gp) {
    by_name(gp, "fc1/add")->mutable_inputs(1)->set_node(99);
    by_name(gp, "fc1/add")->set_name("fc1\nadd");
  });

  // Invalid UTF-8 in a name: protobuf refuses it in binary, we refuse it in text.
  cases.push_back(
      {"invalid utf-8 text",
       "format: \"tessel.graph\" format_version: 1 nodes { op: \"input\" name: \"\\377\" }",
       "not valid UTF-8"});
  {
    std::string b = serialize_graph(sample_graph());
    size_t at = b.find("fc1/add");
    b[at] = '\xff';
    cases.push_back({"invalid utf-8 binary", b, "truncated or corrupt"});
  }
  cases.push_back({"empty", "", "file is empty"});
  cases.push_back({"garbage", std::string("\x01\x02\x03\xff\xfe", 5), "truncated or corrupt"});
  cases.push_back({"text parse error",
                   "format: \"tessel.graph\"\nformat_version: 1\nnodes { op: }\n",
                   "hostile.tsg:3:"});
  cases.push_back({"text unknown field", "format: \"tessel.graph\"\nbogus: 3\n", "hostile.tsg:2:"});
  cases.push_back({"text repeated scalar", "format: \"a\"\nformat: \"b\"\n", "hostile.tsg:2:"});
  cases.push_back({"text wrong magic", "# hello\nformat: \"onnx\"\n", "format is 'onnx'"});
  {
    // Too many nodes: empty node messages cost 2 bytes each; refused before parsing.
    std::string b = serialize_graph(sample_graph(), {.with_data = false});
    std::string many;
    many.reserve(2 * (kMaxGraphNodes + 1));
    for (int64_t i = 0; i <= kMaxGraphNodes; ++i) many.append("\x1a\x00", 2);
    cases.push_back({"too many nodes", b.substr(0, 16) + many, "more than 4194304 nodes"});
  }
  return cases;
}

TEST(Serialize, HostileFilesGiveOneLineErrors) {
  for (const Hostile& c : hostile_cases()) {
    SCOPED_TRACE(c.name);
    std::string msg = error_of(c.bytes);
    EXPECT_TRUE(msg.starts_with("hostile.tsg")) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "want '" << c.expect << "' in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_LE(msg.size(), 1100u);
  }
}

TEST(Serialize, ErrorNamesFileAndNode) {
  proto::GraphProto gp = sample_proto();
  by_name(gp, "fc1/add")->mutable_inputs(1)->set_node(99);
  std::string msg = error_of(bin(gp), "mlp.tsg");
  EXPECT_TRUE(msg.starts_with("mlp.tsg: node 4 'fc1/add' (add, serialize_test.cc:")) << msg;
  EXPECT_TRUE(
      msg.ends_with("): input 1 refers to node 99, which does not exist (the file has 11 nodes)"))
      << msg;
}

TEST(Serialize, SaveRefusesInvalidUtf8) {
  Graph g(fake_registry());
  g.add("input", {}, source_attrs("f32", {2}), "bad\xff");
  EXPECT_THROW(serialize_graph(g), Error);
}

// Truncations, byte flips and the handcrafted cases: each gives an Error naming the file or
// a graph that verifies and round-trips. Never a crash.
TEST(Serialize, BrokenCorpusNeverCrashes) {
  std::vector<std::string> corpus;
  for (bool text : {false, true}) {
    std::string good = serialize_graph(sample_graph(), {.text = text});
    for (size_t n = 0; n < good.size(); n += 7) corpus.push_back(good.substr(0, n));
    std::mt19937 rng(1234);
    for (int k = 0; k < 300; ++k) {
      std::string b = good;
      int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<char>(rng() & 0xFF);
      corpus.push_back(std::move(b));
    }
  }
  for (const Hostile& c : hostile_cases())
    if (c.name != "too many nodes") corpus.push_back(c.bytes);
  int loaded = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    SCOPED_TRACE("corpus entry " + std::to_string(i));
    try {
      Graph g = parse_graph(corpus[i], fake_registry(), "broken.tsg");
      g.verify();
      std::string a = serialize_graph(g);
      EXPECT_EQ(a, serialize_graph(parse_graph(a, fake_registry(), "again.tsg")));
      ++loaded;
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_TRUE(msg.starts_with("broken.tsg")) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // Only the complete files and harmless flips (e.g. inside data bytes) may load.
  EXPECT_LT(loaded, static_cast<int>(corpus.size()) / 2);
}

}  // namespace
}  // namespace tessel
