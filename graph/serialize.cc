#include "graph/serialize.h"

#include <google/protobuf/arena.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <queue>
#include <unordered_map>

#include "graph/error.h"
#include "graph/graph.pb.h"

namespace tessel {

namespace pb = google::protobuf;

namespace {

constexpr std::string_view kFormat = "tessel.graph";
constexpr uint32_t kEndMarker = 0x21475354;  // "TSG!" little-endian

constexpr std::array<proto::DType, kNumDTypes> kDTypeToProto = {
    proto::DTYPE_F32, proto::DTYPE_F64, proto::DTYPE_BF16, proto::DTYPE_F16,
    proto::DTYPE_I32, proto::DTYPE_I64, proto::DTYPE_BOOL};
static_assert(kNumDTypes == 7, "a new DType needs a value in graph.proto and kDTypeToProto");

std::optional<DType> dtype_from_proto(int v) {
  for (int i = 0; i < kNumDTypes; ++i)
    if (kDTypeToProto[i] == v) return static_cast<DType>(i);
  return std::nullopt;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// Errors are one line and of bounded length, whatever names a hostile file holds.
std::string one_line(std::string_view s) {
  constexpr size_t kMaxLen = 1000;
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    static constexpr char kHex[] = "0123456789abcdef";
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
    if (out.size() > kMaxLen) return out + "...";
  }
  return out;
}

// ---- saving -----------------------------------------------------------------------------

// Strings in proto3 must be UTF-8; refuse to write a file that could not be read back.
void check_utf8(std::string_view s, const Node* n, std::string_view what) {
  if (!valid_utf8(s))
    throw Error(one_line((n ? n->where() + ": " : std::string()) + std::string(what) +
                         " is not valid UTF-8, which graph files require"));
}

void put_value(Value v, proto::ValueRef* p) {
  p->set_node(v.node);
  p->set_output(v.index);
}

void put_attr(const Node& n, const AttrValue& v, proto::AttrProto* p) {
  switch (attr_type(v)) {
    case AttrType::boolean: p->set_b(std::get<bool>(v)); break;
    case AttrType::i64: p->set_i(std::get<int64_t>(v)); break;
    case AttrType::f64: p->set_f(std::get<double>(v)); break;
    case AttrType::string:
      check_utf8(std::get<std::string>(v), &n, "a string attribute");
      p->set_s(std::get<std::string>(v));
      break;
    case AttrType::i64s:
      for (int64_t x : std::get<std::vector<int64_t>>(v)) p->mutable_ints()->add_values(x);
      p->mutable_ints();  // an empty list is still a list
      break;
    case AttrType::f64s:
      for (double x : std::get<std::vector<double>>(v)) p->mutable_floats()->add_values(x);
      p->mutable_floats();
      break;
  }
}

// Origins a loader makes for file nodes (Origin::from_file) carry nothing worth storing,
// and storing them would make a file's bytes depend on where it was loaded from.
bool worth_storing(const Origin& o) {
  return !o.empty() && (o.line != 0 || !o.function.empty() || !o.scope.empty());
}

void to_proto(const Graph& g, const SaveOptions& opt, proto::GraphProto* gp) {
  gp->set_format(std::string(kFormat));
  gp->set_format_version(kGraphFormatVersion);
  for (const Node& n : g.nodes()) {
    proto::NodeProto* p = gp->add_nodes();
    check_utf8(n.op, &n, "the op name");
    check_utf8(n.name, &n, "the node name");
    p->set_op(n.op);
    p->set_name(n.name);
    for (auto& [k, v] : n.attrs.items()) {
      check_utf8(k, &n, "an attribute name");
      put_attr(n, v, &(*p->mutable_attrs())[k]);
    }
    for (Value v : n.inputs) put_value(v, p->add_inputs());
    for (const TensorType& t : n.outputs) {
      proto::TensorTypeProto* tp = p->add_outputs();
      tp->set_dtype(kDTypeToProto.at(static_cast<size_t>(t.dtype)));
      for (int64_t d : t.shape) tp->add_dims(d);
    }
    if (worth_storing(n.origin)) {
      check_utf8(n.origin.file, &n, "the origin file");
      check_utf8(n.origin.function, &n, "the origin function");
      p->mutable_origin()->set_file(n.origin.file);
      p->mutable_origin()->set_line(n.origin.line);
      p->mutable_origin()->set_function(n.origin.function);
      if (!n.origin.scope.empty()) {
        check_utf8(n.origin.scope, &n, "the origin scope");
        p->mutable_origin()->set_scope(n.origin.scope);
      }
    }
    if (n.pass != Pass::forward)
      p->set_pass(n.pass == Pass::backward ? proto::NODE_PASS_BACKWARD : proto::NODE_PASS_UPDATE);
    if (n.serves >= 0) p->set_serves(n.serves);
    if (opt.with_data)
      if (const std::vector<std::byte>* d = g.data(n.id))
        p->set_data(reinterpret_cast<const char*>(d->data()), d->size());
  }
  for (const NamedValue& o : g.outputs()) {
    check_utf8(o.name, nullptr, "output name '" + o.name + "'");
    proto::NamedValueProto* p = gp->add_outputs();
    p->set_name(o.name);
    put_value(o.value, p->mutable_value());
  }
  for (const Update& u : g.updates()) {
    check_utf8(u.phase, &g.node(u.variable), "the update phase");
    proto::UpdateProto* p = gp->add_updates();
    p->set_variable(u.variable);
    put_value(u.value, p->mutable_value());
    p->set_phase(u.phase);
  }
  if (!opt.text) gp->set_end_marker(kEndMarker);
}

[[noreturn]] void too_big(uint64_t n) {
  throw Error("graph serializes to " + std::to_string(n) +
              " bytes, over the 2 GiB limit of a graph file; save it without data "
              "(SaveOptions::with_data = false) and keep the weights in a checkpoint");
}

// ---- loading ----------------------------------------------------------------------------

// The first error of the text parser, as "line:column: message".
class FirstError : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!first.empty()) return;
    first = line < 0 ? message
                     : std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
  }
  std::string first;
};

// Text files are printable; binary ones have control bytes among their first few (our
// writer's start with 0x0a 0x0c). Either way the parse that follows validates everything.
bool looks_like_text(std::string_view b) {
  if (b.empty()) return false;
  for (unsigned char c : b.substr(0, 4096))
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) return false;
  return true;
}

class Loader {
 public:
  Loader(const OpRegistry& registry, const std::string& source)
      : registry_(registry), source_(source) {}

  Graph load(std::string_view bytes) {
    if (bytes.empty()) fail("file is empty");
    if (static_cast<uint64_t>(bytes.size()) > static_cast<uint64_t>(kMaxGraphFileBytes))
      fail("file has " + std::to_string(bytes.size()) + " bytes, over the 2 GiB limit");
    gp_ = pb::Arena::CreateMessage<proto::GraphProto>(&arena_);
    bool text = looks_like_text(bytes);
    if (text) {
      parse_text(bytes);
    } else {
      parse_binary(bytes);
    }
    check_header(text);
    convert_nodes();
    return build(topo_order());
  }

 private:
  struct Pending {
    Attrs attrs;
    std::vector<TensorType> declared;
    Origin origin;
  };

  [[noreturn]] void fail(const std::string& msg) const {
    throw Error(one_line(source_ + ": " + msg));
  }
  const proto::NodeProto& pnode(int32_t i) const { return gp_->nodes(i); }
  // "node 7 'fc2/matmul' (matmul, model.cc:42)"
  std::string ctx(int32_t i) const {
    const proto::NodeProto& p = pnode(i);
    std::string s = "node " + std::to_string(i) + " '" + p.name() + "' (" + p.op();
    if (p.origin().line() != 0 && !p.origin().file().empty())
      s += ", " + Origin{p.origin().file(), p.origin().line(), {}, {}}.str();
    return s + ")";
  }
  [[noreturn]] void fail_node(int32_t i, std::string_view msg) const {
    fail(ctx(i) + ": " + std::string(msg));
  }
  // Graph errors start with Node::where(), which ctx() already says.
  [[noreturn]] void fail_node_from(int32_t i, const Error& e) const {
    std::string_view w = e.what();
    std::string where =
        pending_[i].origin.str() + ": " + pnode(i).op() + " '" + pnode(i).name() + "': ";
    if (w.starts_with(where)) w.remove_prefix(where.size());
    fail_node(i, w);
  }
  void utf8(std::string_view s, std::string_view what) const {
    if (!valid_utf8(s)) fail(std::string(what) + " is not valid UTF-8");
  }

  // Counts top-level nodes without materialising them, so "too many nodes" costs nothing.
  void prescan(std::string_view b) const {
    pb::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(b.data()),
                                static_cast<int>(b.size()));
    int64_t nodes = 0;
    while (uint32_t tag = in.ReadTag()) {
      uint64_t v64;
      uint32_t v32;
      switch (tag & 7) {
        case 0:
          if (!in.ReadVarint64(&v64)) return;
          break;
        case 1:
          if (!in.ReadLittleEndian64(&v64)) return;
          break;
        case 5:
          if (!in.ReadLittleEndian32(&v32)) return;
          break;
        case 2:
          if (!in.ReadVarint32(&v32) || !in.Skip(static_cast<int>(v32))) return;
          if ((tag >> 3) == proto::GraphProto::kNodesFieldNumber && ++nodes > kMaxGraphNodes)
            fail("has more than " + std::to_string(kMaxGraphNodes) + " nodes, the limit");
          break;
        default: return;  // groups: let the parser reject them
      }
    }
  }

  void parse_binary(std::string_view b) {
    prescan(b);
    // protobuf logs invalid UTF-8 before failing; the Error below is the report.
    pb::LogSilencer quiet;
    if (!gp_->ParseFromArray(b.data(), static_cast<int>(b.size())))
      fail("not a valid graph file: the binary protobuf is truncated or corrupt");
  }

  void parse_text(std::string_view b) {
    pb::io::ArrayInputStream in(b.data(), static_cast<int>(b.size()));
    FirstError errors;
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&errors);
    if (!parser.Parse(&in, gp_))
      throw Error(one_line(source_ + ":" +
                           (errors.first.empty() ? " text format parse failed" : errors.first)));
  }

  void check_header(bool text) const {
    if (gp_->format() != kFormat)
      fail(gp_->format().empty() ? "not a tessel graph file (the format field is missing)"
                                 : "not a tessel graph file (format is '" + gp_->format() +
                                       "', expected '" + std::string(kFormat) + "')");
    if (gp_->format_version() == 0) fail("format_version is missing");
    if (gp_->format_version() > kGraphFormatVersion)
      fail("format version " + std::to_string(gp_->format_version()) +
           " is newer than this build reads (" + std::to_string(kGraphFormatVersion) + ")");
    if (!text && gp_->end_marker() != kEndMarker)
      fail("file is truncated (the end marker is missing)");
    if (gp_->nodes_size() > kMaxGraphNodes)
      fail("has " + std::to_string(gp_->nodes_size()) + " nodes, more than the limit of " +
           std::to_string(kMaxGraphNodes));
  }

  std::optional<AttrValue> attr_value(const proto::AttrProto& a) const {
    switch (a.value_case()) {
      case proto::AttrProto::kB: return AttrValue(a.b());
      case proto::AttrProto::kI: return AttrValue(int64_t{a.i()});
      case proto::AttrProto::kF: return AttrValue(a.f());
      case proto::AttrProto::kS: return AttrValue(a.s());
      case proto::AttrProto::kInts:
        return AttrValue(std::vector<int64_t>(a.ints().values().begin(), a.ints().values().end()));
      case proto::AttrProto::kFloats:
        return AttrValue(
            std::vector<double>(a.floats().values().begin(), a.floats().values().end()));
      case proto::AttrProto::VALUE_NOT_SET: break;
    }
    return std::nullopt;
  }

  // Checks each node on its own, in file order, before anything is built from it.
  void convert_nodes() {
    const int32_t n = gp_->nodes_size();
    std::unordered_map<std::string_view, int32_t> names;
    pending_.reserve(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      const proto::NodeProto& p = pnode(i);
      utf8(p.op(), "node " + std::to_string(i) + ": the op name");
      utf8(p.name(), "node " + std::to_string(i) + ": the name");
      if (p.op().empty()) fail("node " + std::to_string(i) + " '" + p.name() + "': op is missing");
      if (p.name().empty())
        fail("node " + std::to_string(i) + " (" + p.op() + "): name is missing");
      if (auto [it, fresh] = names.emplace(p.name(), i); !fresh)
        fail_node(i, "duplicate name (node " + std::to_string(it->second) + " has it too)");
      if (!registry_.find(p.op())) fail_node(i, "unknown op '" + p.op() + "'");
      Pending pn;
      if (p.has_origin() && !p.origin().file().empty()) {
        utf8(p.origin().file(), "node " + std::to_string(i) + ": the origin file");
        utf8(p.origin().function(), "node " + std::to_string(i) + ": the origin function");
        utf8(p.origin().scope(), "node " + std::to_string(i) + ": the origin scope");
        pn.origin = Origin{p.origin().file(), p.origin().line(), p.origin().function(), p.origin().scope()};
      } else {
        pn.origin = Origin::from_file(source_);
      }
      for (auto& [k, a] : p.attrs()) {
        utf8(k, ctx(i) + ": an attribute name");
        std::optional<AttrValue> v = attr_value(a);
        if (!v) fail_node(i, "attribute '" + k + "' has no value");
        if (auto* s = std::get_if<std::string>(&*v)) utf8(*s, ctx(i) + ": attribute '" + k + "'");
        pn.attrs.set(k, std::move(*v));
      }
      for (int k = 0; k < p.inputs_size(); ++k) {
        const proto::ValueRef& in = p.inputs(k);
        if (in.node() < 0 || in.node() >= n)
          fail_node(i, "input " + std::to_string(k) + " refers to node " +
                           std::to_string(in.node()) + ", which does not exist (the file has " +
                           std::to_string(n) + " nodes)");
        if (in.output() < 0)
          fail_node(
              i, "input " + std::to_string(k) + " refers to output " + std::to_string(in.output()));
      }
      for (int k = 0; k < p.outputs_size(); ++k) {
        const proto::TensorTypeProto& t = p.outputs(k);
        std::optional<DType> dt = dtype_from_proto(t.dtype());
        if (!dt)
          fail_node(i, "output " + std::to_string(k) +
                           (t.dtype() == proto::DTYPE_UNSPECIFIED
                                ? std::string(" has no dtype")
                                : " has unknown dtype " + std::to_string(t.dtype())));
        if (t.dims_size() > kMaxRank)
          fail_node(i, "output " + std::to_string(k) + " has rank " +
                           std::to_string(t.dims_size()) + ", over the maximum of " +
                           std::to_string(kMaxRank));
        Shape shape(t.dims().begin(), t.dims().end());
        try {
          checked_numel(shape);
        } catch (const Error& e) {
          fail_node(i, "output " + std::to_string(k) + ": " + e.what());
        }
        pn.declared.push_back(TensorType{*dt, std::move(shape)});
      }
      if (p.pass() != proto::NODE_PASS_FORWARD && p.pass() != proto::NODE_PASS_BACKWARD &&
          p.pass() != proto::NODE_PASS_UPDATE)
        fail_node(i, "unknown pass " + std::to_string(p.pass()));
      if (p.has_serves() && (p.serves() < 0 || p.serves() >= n || p.serves() == i))
        fail_node(i, "serves node " + std::to_string(p.serves()) + ", which does not exist (the file has " +
                         std::to_string(n) + " nodes)");
      pending_.push_back(std::move(pn));
    }
  }

  // Kahn's algorithm, always taking the lowest file position ready: a file that is already
  // in order keeps its order, so save -> load -> save gives the same bytes.
  std::vector<int32_t> topo_order() const {
    const int32_t n = gp_->nodes_size();
    std::vector<size_t> first(static_cast<size_t>(n) + 1, 0);  // successors, CSR
    std::vector<int32_t> indeg(n, 0);
    for (int32_t i = 0; i < n; ++i) {
      indeg[i] = pnode(i).inputs_size();
      for (auto& in : pnode(i).inputs()) ++first[static_cast<size_t>(in.node()) + 1];
    }
    for (int32_t i = 0; i < n; ++i) first[i + 1] += first[i];
    std::vector<int32_t> succ(first[n]);
    std::vector<size_t> fill(first.begin(), first.end() - 1);
    for (int32_t i = 0; i < n; ++i)
      for (auto& in : pnode(i).inputs()) succ[fill[in.node()]++] = i;

    std::priority_queue<int32_t, std::vector<int32_t>, std::greater<>> ready;
    for (int32_t i = 0; i < n; ++i)
      if (indeg[i] == 0) ready.push(i);
    std::vector<int32_t> order;
    order.reserve(n);
    while (!ready.empty()) {
      int32_t i = ready.top();
      ready.pop();
      order.push_back(i);
      for (size_t e = first[i]; e < first[i + 1]; ++e)
        if (--indeg[succ[e]] == 0) ready.push(succ[e]);
    }
    if (static_cast<int32_t>(order.size()) != n) fail(describe_cycle(indeg));
    return order;
  }

  // Every node left unsorted has an unsorted input, so walking inputs must close a loop.
  std::string describe_cycle(const std::vector<int32_t>& indeg) const {
    const int32_t n = gp_->nodes_size();
    int32_t cur = 0;
    while (indeg[cur] == 0) ++cur;
    std::vector<int32_t> at(n, -1), path;
    while (at[cur] < 0) {
      at[cur] = static_cast<int32_t>(path.size());
      path.push_back(cur);
      for (auto& in : pnode(cur).inputs())
        if (indeg[in.node()] > 0) {
          cur = in.node();
          break;
        }
    }
    std::vector<int32_t> cycle(path.begin() + at[cur], path.end());
    std::reverse(cycle.begin(), cycle.end());  // walked against the edges
    std::rotate(cycle.begin(), std::min_element(cycle.begin(), cycle.end()), cycle.end());
    std::string s = "cycle through ";
    constexpr size_t kShow = 8;
    for (size_t k = 0; k < cycle.size(); ++k) {
      if (cycle.size() > kShow && k == kShow - 1) {
        s += "... (" + std::to_string(cycle.size()) + " nodes) -> ";
        break;
      }
      s += "'" + pnode(cycle[k]).name() + "' -> ";
    }
    return s + "'" + pnode(cycle[0]).name() + "'";
  }

  Value value_ref(const proto::ValueRef& v, const std::vector<int32_t>& id_of,
                  const std::string& what) const {
    if (v.node() < 0 || v.node() >= gp_->nodes_size())
      fail(what + " refers to node " + std::to_string(v.node()) + ", which does not exist");
    return Value{id_of[v.node()], v.output()};
  }

  Graph build(const std::vector<int32_t>& order) {
    Graph g(registry_);
    std::vector<int32_t> id_of(order.size(), -1);
    for (int32_t i : order) {
      const proto::NodeProto& p = pnode(i);
      std::vector<Value> inputs;
      inputs.reserve(p.inputs_size());
      for (auto& in : p.inputs()) inputs.push_back(Value{id_of[in.node()], in.output()});
      Pending& pn = pending_[i];
      try {
        id_of[i] = g.add_node_typed(p.op(), std::move(inputs), std::move(pn.attrs), p.name(),
                                    pn.origin, std::move(pn.declared));
      } catch (const Error& e) {
        fail_node_from(i, e);
      }
      if (p.has_data()) set_data(g, i, id_of[i]);
    }
    for (int32_t i : order) {  // passes, once every node has its id
      const proto::NodeProto& p = pnode(i);
      const Pass pass = p.pass() == proto::NODE_PASS_BACKWARD ? Pass::backward
                        : p.pass() == proto::NODE_PASS_UPDATE ? Pass::update
                                                              : Pass::forward;
      const int32_t serves = p.has_serves() ? id_of[p.serves()] : -1;
      if (serves >= id_of[i]) fail_node(i, "serves node " + std::to_string(p.serves()) + ", which comes after it");
      if (pass != Pass::forward || serves >= 0) g.annotate_node(id_of[i], pass, serves);
    }
    std::unordered_map<std::string_view, int> out_names;
    for (int k = 0; k < gp_->outputs_size(); ++k) {
      const proto::NamedValueProto& o = gp_->outputs(k);
      std::string what = "output " + std::to_string(k) + " '" + o.name() + "'";
      utf8(o.name(), what);
      if (o.name().empty()) fail(what + ": name is missing");
      if (!out_names.emplace(o.name(), k).second) fail(what + ": duplicate output name");
      if (!o.has_value()) fail(what + ": value is missing");
      Value v = value_ref(o.value(), id_of, what);
      try {
        g.set_output(o.name(), v);
      } catch (const Error& e) {
        fail(what + ": " + e.what());
      }
    }
    for (int k = 0; k < gp_->updates_size(); ++k) {
      const proto::UpdateProto& u = gp_->updates(k);
      std::string what = "update " + std::to_string(k);
      utf8(u.phase(), what + ": the phase");
      if (u.variable() < 0 || u.variable() >= gp_->nodes_size())
        fail(what + " refers to node " + std::to_string(u.variable()) + ", which does not exist");
      if (!u.has_value()) fail(what + ": value is missing");
      Value v = value_ref(u.value(), id_of, what);
      try {
        g.add_update(id_of[u.variable()], v, u.phase());
      } catch (const Error& e) {
        fail(what + ": " + e.what());
      }
    }
    return g;
  }

  void set_data(Graph& g, int32_t i, int32_t id) const {
    const Node& n = g.node(id);
    const std::string& d = pnode(i).data();
    if (n.def->kind != OpKind::variable && n.def->kind != OpKind::constant)
      fail_node(i, "carries data, but only variables and constants may");
    if (n.outputs.size() != 1) fail_node(i, "carries data, but has no single output");
    if (static_cast<int64_t>(d.size()) != n.outputs[0].bytes())
      fail_node(i, "data has " + std::to_string(d.size()) + " bytes, " + n.outputs[0].str() +
                       " needs " + std::to_string(n.outputs[0].bytes()));
    std::vector<std::byte> bytes(d.size());
    if (!d.empty()) std::memcpy(bytes.data(), d.data(), d.size());
    try {
      g.set_data(id, std::move(bytes));
    } catch (const Error& e) {
      fail_node_from(i, e);
    }
  }

  const OpRegistry& registry_;
  const std::string& source_;
  pb::Arena arena_;
  proto::GraphProto* gp_ = nullptr;  // owned by arena_
  std::vector<Pending> pending_;     // by file position
};

std::string read_file(const std::string& path) {
  auto fail = [&](const std::string& why) {
    throw Error(one_line("cannot read graph file '" + path + "': " + why));
  };
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(std::strerror(errno));
  std::unique_ptr<FILE, int (*)(FILE*)> close(f, &std::fclose);
  struct stat st {};
  if (fstat(fileno(f), &st) != 0) fail(std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("not a regular file");
  if (st.st_size > kMaxGraphFileBytes)
    fail("it has " + std::to_string(st.st_size) + " bytes, over the 2 GiB limit");
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  if (!bytes.empty() && std::fread(bytes.data(), 1, bytes.size(), f) != bytes.size())
    fail(std::ferror(f) ? std::strerror(errno) : "it shrank while being read");
  return bytes;
}

}  // namespace

std::string serialize_graph(const Graph& g, SaveOptions opt) {
  pb::Arena arena;
  auto* gp = pb::Arena::CreateMessage<proto::GraphProto>(&arena);
  to_proto(g, opt, gp);
  std::string out;
  if (opt.text) {
    pb::TextFormat::Printer printer;
    if (!printer.PrintToString(*gp, &out)) throw Error("graph could not be printed as text");
    if (out.size() > static_cast<size_t>(kMaxGraphFileBytes)) too_big(out.size());
    return out;
  }
  size_t n = gp->ByteSizeLong();
  if (n > static_cast<size_t>(kMaxGraphFileBytes)) too_big(n);
  {
    pb::io::StringOutputStream sos(&out);
    pb::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);  // map entries sorted by key
    gp->SerializeWithCachedSizes(&cos);
    if (cos.HadError()) throw Error("graph could not be serialized");
  }
  return out;
}

void save_graph(const Graph& g, const std::string& path, SaveOptions opt) {
  std::string bytes;
  try {
    bytes = serialize_graph(g, opt);
  } catch (const Error& e) {
    throw Error("cannot save graph to '" + path + "': " + e.what());
  }
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto fail = [&](const std::string& why) {
    std::remove(tmp.c_str());
    throw Error(one_line("cannot write graph file '" + path + "': " + why));
  };
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(std::string(std::strerror(errno)) + " (creating " + tmp + ")");
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fflush(f) == 0 &&
            ::fsync(fileno(f)) == 0;
  int err = errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) fail(std::strerror(err));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(std::strerror(errno));
}

Graph load_graph(const std::string& path, const OpRegistry& registry) {
  return parse_graph(read_file(path), registry, path);
}

Graph parse_graph(std::string_view bytes, const OpRegistry& registry,
                  const std::string& source_name) {
  return Loader(registry, source_name).load(bytes);
}

}  // namespace tessel
