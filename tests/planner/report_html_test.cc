// The HTML plan report: every part present under its id, nothing fetched from the network,
// names escaped, measurements beside predictions, and timelines that stay small however many
// tasks they hold. (tests/e2e/html_report.sh renders the page in a browser.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <tuple>
#include <utility>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "planner/report.h"
#include "planner/search.h"

namespace tessel::planner {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kParts[] = {"summary", "mesh", "stages", "memory", "timeline-simulated", "alternatives"};

std::shared_ptr<Graph> training_graph_of(const std::string& spec, int64_t batch) {
  models::Built m = models::from_spec(spec, batch, true);
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(m.model->graph(), "loss", oc);
  return std::make_shared<Graph>(m.model->graph());
}

// The part of the page with id `id`: from its opening tag to the end of its section.
std::string part(const std::string& html, const std::string& id) {
  const size_t at = html.find("id=\"" + id + "\"");
  if (at == std::string::npos) return "";
  const size_t end = html.find("</section>", at);
  return html.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

Task task(std::string name, int64_t rank, Stream stream, TaskKind kind, double seconds) {
  Task t;
  t.name = std::move(name);
  t.rank = rank;
  t.stream = stream;
  t.kind = kind;
  t.duration_s = seconds;
  return t;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) ++n;
  return n;
}

void expect_self_contained(const std::string& html) {
  for (const char* bad : {"http://", "https://", "<script", "<link", "@import", "url("})
    EXPECT_THAT(html, Not(HasSubstr(bad))) << bad;
  EXPECT_EQ(count(html, "<section"), count(html, "</section>"));
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));
  EXPECT_EQ(count(html, "<table"), count(html, "</table>"));
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
}

struct Planned {
  std::shared_ptr<Graph> graph;
  ClusterSpec cluster;
  SearchOptions options;
  SearchResult result;
};

Planned plan(const std::string& spec, int64_t batch, const std::string& cluster) {
  Planned p;
  p.graph = training_graph_of(spec, batch);
  p.cluster = parse_cluster(cluster);
  p.options = default_search_options(*p.graph, p.cluster);
  p.result = search_plan(*p.graph, "train", p.cluster, Pins{}, p.options);
  return p;
}

TEST(PlanReportHtml, HasEveryPartAndNeedsNoNetwork) {
  for (auto [spec, cluster, batch] : {std::tuple<std::string, std::string, int64_t>{"mlp:784-1024-1024-10", "local:4", 256},
                                      {"gpt:layers=4,d_model=256,heads=4,seq=128,vocab=512", "a100-80g:nodes=2", 64}}) {
    SCOPED_TRACE(spec + " on " + cluster);
    Planned p = plan(spec, batch, cluster);
    ReportContext ctx{spec, cluster, batch, &p.cluster, &p.options.cost, p.graph.get(), "train"};
    const std::string html = report_html(p.result, ctx);
    for (const char* id : kParts) EXPECT_THAT(html, HasSubstr(std::string("id=\"") + id + "\"")) << id;
    EXPECT_THAT(html, Not(HasSubstr("id=\"timeline-measured\"")));
    EXPECT_THAT(html, Not(HasSubstr("id=\"predicted-vs-measured\"")));
    expect_self_contained(html);
    // The simulated step is drawn: the search keeps no simulation, so the page made one; every
    // stage has a compute and a comm lane, and tasks beyond those lanes' backgrounds.
    const PlanConfig& c = p.result.best.config;
    ASSERT_EQ(p.result.best.simulation, nullptr);
    const std::string timeline = part(html, "timeline-simulated");
    EXPECT_GT(count(timeline, "<rect"), static_cast<size_t>(2 * c.pp) + 2);
    EXPECT_THAT(timeline, HasSubstr("forward"));
    EXPECT_THAT(timeline, HasSubstr("backward"));
    EXPECT_THAT(timeline, HasSubstr(" ms"));
    // Memory: one stacked bar per stage against the capacity, in binary units.
    const std::string memory = part(html, "memory");
    EXPECT_THAT(memory, HasSubstr(">capacity "));
    EXPECT_GE(count(memory, "<title>stage 0 weights"), 1u);
    EXPECT_THAT(memory, HasSubstr("iB"));
    // The mesh draws every device, the stages table lists each stage's layers.
    EXPECT_EQ(count(part(html, "mesh"), "<title>rank "), static_cast<size_t>(c.devices()));
    for (const StageEstimate& st : p.result.best.stages) EXPECT_THAT(part(html, "stages"), HasSubstr(st.layers));
    // Every alternative and why it lost.
    for (const Alternative& a : p.result.alternatives) {
      EXPECT_THAT(part(html, "alternatives"), HasSubstr(a.estimate.config.str()));
      EXPECT_THAT(part(html, "alternatives"), HasSubstr(a.why.substr(0, a.why.find_first_of("<>&\"'"))));
    }
    EXPECT_LT(html.size(), 2u << 20);
  }
}

TEST(PlanReportHtml, EscapesNames) {
  Planned p = plan("mlp:64-128-10", 32, "local:2");
  const std::string name = "mlp <b>bold</b> & \"quoted\" 'single'";
  ReportContext ctx{name, "local:2 <x>", 32, &p.cluster, &p.options.cost, p.graph.get(), "train"};
  const std::string html = report_html(p.result, ctx);
  EXPECT_THAT(html, HasSubstr("mlp &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; &#39;single&#39;"));
  EXPECT_THAT(html, HasSubstr("local:2 &lt;x&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("<b>bold")));
  EXPECT_THAT(html, Not(HasSubstr("<x>")));
}

MeasuredRun hand_measured() {
  MeasuredRun m;
  m.step_s = 0.0123;
  m.compute_s = 0.0081;
  m.optimizer_s = 0.0009;
  m.exposed_comm_s = 0.0021;
  m.bubble_s = 0.0012;
  m.peak_bytes = {3.5 * (1 << 20), 3.25 * (1 << 20)};
  m.timeline = {{0, "compute", "fc1/matmul <mb 0>", "forward", 0, 0.004},
                {0, "compute", "fc1/matmul_grad (mb 0)", "backward", 0.004, 0.006},
                {0, "comm", "grads/bucket0", "collective", 0.008, 0.003},
                {1, "compute", "fc1/matmul (mb 0)", "forward", 0, 0.0045},
                {1, "compute", "waiting for rank 0", "wait", 0.0045, 0.001},
                {1, "copy", "h2d & d2h", "transfer", 0.001, 0.002}};
  return m;
}

TEST(PlanReportHtml, SetsMeasurementsBesideThePredictions) {
  Planned p = plan("mlp:64-128-10", 32, "local:2");
  ReportContext ctx{"mlp", "local:2", 32, &p.cluster, &p.options.cost, p.graph.get(), "train"};
  const MeasuredRun m = hand_measured();
  const std::string html = report_html(p.result, ctx, &m);
  for (const char* id : kParts) EXPECT_THAT(html, HasSubstr(std::string("id=\"") + id + "\"")) << id;
  expect_self_contained(html);
  const std::string timeline = part(html, "timeline-measured");
  ASSERT_FALSE(timeline.empty());
  EXPECT_THAT(timeline, HasSubstr("fc1/matmul &lt;mb 0&gt;"));
  EXPECT_THAT(timeline, HasSubstr("h2d &amp; d2h"));
  EXPECT_THAT(timeline, HasSubstr(">rank 1<"));
  EXPECT_THAT(timeline, HasSubstr(">copy<"));     // a stream beyond compute and comm gets its lane
  EXPECT_THAT(timeline, HasSubstr(">transfer<"));  // and an unknown kind its legend entry
  EXPECT_THAT(timeline, HasSubstr(">wait<"));
  EXPECT_EQ(count(timeline, "\"><title>"), m.timeline.size());  // one bar each (lane labels have titles too)
  const std::string table = part(html, "predicted-vs-measured");
  ASSERT_FALSE(table.empty());
  EXPECT_THAT(table, HasSubstr("12.3 ms"));
  EXPECT_THAT(table, HasSubstr("8.10 ms"));
  EXPECT_THAT(table, HasSubstr("2.10 ms"));
  EXPECT_THAT(table, HasSubstr("3.50 MiB"));
  EXPECT_THAT(table, HasSubstr("3.25 MiB"));
  EXPECT_EQ(count(table, "<tr>"), 1 + 5 + 1 + m.peak_bytes.size());
  // The measured peaks are marked on the memory bars.
  EXPECT_THAT(part(html, "memory"), HasSubstr("measured peak"));
  // Measurements without a timeline: the table, no measured timeline.
  MeasuredRun no_timeline = m;
  no_timeline.timeline.clear();
  const std::string h2 = report_html(p.result, ctx, &no_timeline);
  EXPECT_THAT(h2, HasSubstr("id=\"predicted-vs-measured\""));
  EXPECT_THAT(h2, Not(HasSubstr("id=\"timeline-measured\"")));
}

// A plan made by hand whose simulation holds many tiny tasks: they merge into a bar per kind,
// a lone one is left out, and overlapping wide ones stop at the per-stream cap.
TEST(PlanReportHtml, TimelinesStaySmallWithManyTasks) {
  SearchResult r;
  StageEstimate st;
  st.end_layer = 1;
  st.layers = "only";
  st.weight_bytes = st.peak_memory_bytes = 1 << 20;
  r.best.stages = {st};
  r.best.memory_capacity_bytes = 1 << 30;
  r.best.step_time_s = 1;
  auto sim = std::make_shared<Simulation>(2);
  sim->add(task("long", 0, Stream::compute, TaskKind::forward, 1.0));
  int64_t prev = -1;
  for (int i = 0; i < 10000; ++i) {  // 5 ms of 1 µs forward tasks, then as many backward: about 10 px
    Task t = task("tiny" + std::to_string(i), 1, Stream::compute, i < 5000 ? TaskKind::forward : TaskKind::backward, 1e-6);
    if (prev >= 0) t.deps.push_back(prev);
    prev = sim->add(t);
  }
  Task lone = task("lone", 1, Stream::comm, TaskKind::collective, 1e-6);
  lone.deps.push_back(0);  // after the long task: alone at the end of the step
  sim->add(lone);
  r.best.simulation = sim;
  ReportContext ctx{"hand-made", "none", 1, nullptr, nullptr, nullptr, "train"};
  MeasuredRun m;
  for (int i = 0; i < 3000; ++i) m.timeline.push_back({0, "compute", "overlapping", "forward", i * 1e-6, 0.5});
  const std::string html = report_html(r, ctx, &m);
  expect_self_contained(html);
  const std::string sim_part = part(html, "timeline-simulated");
  EXPECT_THAT(sim_part, HasSubstr("10000 tasks narrower than a pixel merged into 2 bars "));
  // One bar per kind, about 5 px each: the forward one holds all the forward time (and the
  // backward tasks sharing its last pixel), the backward one the rest.
  EXPECT_THAT(sim_part, HasSubstr("forward 5.00 ms; backward "));
  EXPECT_THAT(sim_part, HasSubstr("first tiny0, last tiny5"));
  EXPECT_THAT(sim_part, HasSubstr(", last tiny9999</title>"));
  EXPECT_THAT(sim_part, HasSubstr("Left out: 1 task narrower than a pixel"));
  EXPECT_LT(count(sim_part, "<rect"), 10u);
  const std::string measured_part = part(html, "timeline-measured");
  EXPECT_THAT(measured_part, HasSubstr("Not drawn: 1000 tasks beyond 2000 bars"));
  EXPECT_EQ(count(measured_part, "<title>overlapping"), static_cast<size_t>(kMaxBarsPerLane));
  EXPECT_LT(html.size(), 1u << 20);
}

TEST(PlanReportHtml, TimelineEventsOfASimulation) {
  Simulation sim(2);
  const int64_t a = sim.add(task("a", 0, Stream::compute, TaskKind::forward, 1.0));
  Task b = task("b", 0, Stream::comm, TaskKind::collective, 0.5);
  b.group = {1, 0};
  b.deps = {a};
  sim.add(b);
  sim.add(task("c", 1, Stream::compute, TaskKind::backward, 2.0));
  Task free_task = task("free", 1, Stream::compute, TaskKind::other, 0);
  free_task.memory_delta_bytes = -1;
  sim.add(free_task);
  const std::vector<TimelineEvent> ev = timeline_events(sim, sim.run());
  ASSERT_EQ(ev.size(), 4u);  // the free takes no time: left out; b on both ranks
  auto expect = [&](size_t i, int64_t rank, const char* stream, const char* name, const char* kind, double start, double dur) {
    SCOPED_TRACE(i);
    EXPECT_EQ(ev[i].rank, rank);
    EXPECT_EQ(ev[i].stream, stream);
    EXPECT_EQ(ev[i].name, name);
    EXPECT_EQ(ev[i].kind, kind);
    EXPECT_DOUBLE_EQ(ev[i].start_s, start);
    EXPECT_DOUBLE_EQ(ev[i].dur_s, dur);
  };
  expect(0, 0, "compute", "a", "forward", 0, 1);
  expect(1, 0, "comm", "b", "collective", 1, 0.5);
  expect(2, 1, "compute", "c", "backward", 0, 2);
  expect(3, 1, "comm", "b", "collective", 1, 0.5);
  // A result of another simulation is refused.
  Simulation other(1);
  EXPECT_THROW(timeline_events(sim, other.run()), Error);
}

}  // namespace
}  // namespace tessel::planner
