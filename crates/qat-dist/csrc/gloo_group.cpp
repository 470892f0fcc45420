// A process group on libtorch's own c10d: a TCPStore for the rendezvous and the Gloo backend for
// the collectives, behind a small C interface for the Rust side. Every entry point catches C++
// exceptions and returns their message (malloc'd, freed by qat_dist_free_str) instead.
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
};

char *dup_message(const char *what) {
  size_t n = std::strlen(what);
  char *s = static_cast<char *>(std::malloc(n + 1));
  if (s != nullptr) {
    std::memcpy(s, what, n + 1);
  }
  return s;
}

template <typename F> int guarded(char **err, F &&f) {
  try {
    f();
    return 0;
  } catch (const c10::Error &e) {
    *err = dup_message(e.what_without_backtrace());
  } catch (const std::exception &e) {
    *err = dup_message(e.what());
  } catch (...) {
    *err = dup_message("unknown C++ exception");
  }
  return 1;
}

void wait_for(const c10::intrusive_ptr<c10d::Work> &work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) {
    throw std::runtime_error("collective did not complete");
  }
}

} // namespace

extern "C" {

void qat_dist_free_str(char *s) { std::free(s); }

// Joins the group: rank 0 serves the TCPStore at host:port, the others connect to it. `ifname`
// (may be null or empty) picks the network interface Gloo uses; otherwise Gloo's default (the
// interface the host name resolves to).
void *qat_dist_group_new(const char *host, uint16_t port, int rank, int world,
                         int64_t timeout_ms, const char *ifname, char **err) {
  Group *out = nullptr;
  guarded(err, [&] {
    auto g = std::make_unique<Group>();
    g->timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = g->timeout;
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> gopts;
    if (ifname != nullptr && ifname[0] != '\0') {
      gopts = c10d::ProcessGroupGloo::Options::create(g->timeout);
      gopts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(std::string(ifname), false));
    } else {
      gopts = c10d::ProcessGroupGloo::Options::create_default(g->timeout);
    }
    g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, gopts);
    out = g.release();
  });
  return out;
}

void qat_dist_group_free(void *g) { delete static_cast<Group *>(g); }

// In place: every rank's tensor becomes the reduction over the ranks. op: 0 sum, 1 min, 2 max.
int qat_dist_all_reduce(void *g, void *tensor, int op, char **err) {
  return guarded(err, [&] {
    auto *grp = static_cast<Group *>(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor *>(tensor)};
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp(c10d::ReduceOp::MIN)
                 : op == 2 ? c10d::ReduceOp(c10d::ReduceOp::MAX)
                           : c10d::ReduceOp(c10d::ReduceOp::SUM);
    o.timeout = grp->timeout;
    wait_for(grp->pg->allreduce(ts, o), grp->timeout);
  });
}

// In place: every rank's tensor becomes root's.
int qat_dist_broadcast(void *g, void *tensor, int root, char **err) {
  return guarded(err, [&] {
    auto *grp = static_cast<Group *>(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor *>(tensor)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = grp->timeout;
    wait_for(grp->pg->broadcast(ts, o), grp->timeout);
  });
}

int qat_dist_barrier(void *g, char **err) {
  return guarded(err, [&] {
    auto *grp = static_cast<Group *>(g);
    c10d::BarrierOptions o;
    o.timeout = grp->timeout;
    wait_for(grp->pg->barrier(o), grp->timeout);
  });
}

} // extern "C"
