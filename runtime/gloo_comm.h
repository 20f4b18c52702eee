// The Gloo engine: each rank is its own endpoint over Gloo's TCP transport, in any process
// on any host that reaches the others' address. Ranks meet through a rendezvous store: a
// directory every rank can read and write (a shared disk), or, for ranks that are threads of
// one process, memory. A group's connections are made the first time its members use it
// (every member calls on a group in the same order, so the first call is the members'
// meeting); the whole world's are made when the endpoint is created, which therefore waits
// for every rank to create its own.
//
// Collectives: all-reduce is Gloo's ring (buckets packed into one buffer; a buffer of 2 MiB
// or more split over the group's lanes, each its own set of connections, reduced side by
// side as NCCL reduces over several channels; between two members, a smaller buffer is
// swapped in one exchange and each adds the other's); reduce-scatter
// is an all-to-all of the slices and a local reduction (the same bytes as a ring); the
// others are Gloo's all-gather, all-to-all, broadcast and barrier, with tensors split along
// a dim other than the first packed around them. Sends copy the tensor and return (a send
// never waits for its receiver, so crossed pipeline sends cannot deadlock); the copy goes
// out in the background and is reused once delivered. Every call gives up after the
// timeout with an error naming this rank, the op and the group; abort closes this rank's
// connections, so peers blocked on it fail at once instead of at their timeouts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/communicator.h"

namespace tessel::runtime {

class GlooRendezvous;  // where ranks of one job find each other

// A directory shared by every rank of the job, used by this job alone (Gloo refuses keys it
// finds there already): a fresh one per run.
std::shared_ptr<GlooRendezvous> gloo_file_rendezvous(const std::string& dir, std::shared_ptr<void> keep_alive = {});
// In memory: for ranks that are threads of one process.
std::shared_ptr<GlooRendezvous> gloo_memory_rendezvous();
// A TCP store (runtime/tcp_store.h), for hosts with no shared disk. keep_alive is held as
// long as the rendezvous is (the server, where this process serves the store).
class TcpStoreClient;
std::shared_ptr<GlooRendezvous> gloo_tcp_rendezvous(std::shared_ptr<TcpStoreClient> client, std::shared_ptr<void> keep_alive = {});

// The same store for the `world`-th world a process of the job connects (its groups' keys
// apart from the earlier worlds'): every process connects its worlds in the same order.
std::shared_ptr<GlooRendezvous> gloo_world_rendezvous(std::shared_ptr<GlooRendezvous> rendezvous, int64_t world);

struct GlooOptions : CommOptions {
  std::string hostname = "127.0.0.1";  // the address this rank listens on
  // Connections per group: a large all-reduce runs one ring per lane, on parts of the
  // buffer, at once. Two take 10-25 % off a 4-256 MiB all-reduce between two processes on
  // loopback on a 2-core host (one ring's transfers wait on each other's wakeups); 1: one ring.
  int lanes = 2;
};

// Rank `rank` of `size`. Returns once every rank of the world has connected (or throws
// after the timeout).
std::unique_ptr<Communicator> gloo_communicator(int64_t rank, int64_t size, std::shared_ptr<GlooRendezvous> rendezvous,
                                                GlooOptions options = {});

}  // namespace tessel::runtime
