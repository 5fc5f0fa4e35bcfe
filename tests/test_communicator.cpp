// The choice of communicator (runtime.comm against the backend and the launch), in a process that
// was not started by mpirun: what can be decided without other ranks.
#include <catch2/catch.hpp>
#include <stdexcept>

#include "moda/dist.hpp"

using namespace moda;
using Catch::Contains;

namespace {

RuntimeConfig with_comm(CommKind kind) {
  RuntimeConfig runtime;
  runtime.comm = kind;
  return runtime;
}

std::string error_of(const std::string& device, CommKind kind) {
  try {
    make_communicator(device, with_comm(kind));
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a process started alone gets the single-process communicator", "[dist]") {
  REQUIRE_FALSE(launched_by_mpi());
  for (CommKind kind : {CommKind::auto_detect, CommKind::single}) {
    for (const char* device : {"cpu", "cuda"}) {
      const auto comm = make_communicator(device, with_comm(kind));
      CHECK(comm->name() == "single process");
      CHECK(comm->world() == 1);
    }
  }
}

TEST_CASE("runtime.comm that does not fit the backend stops with a clear error", "[dist]") {
  CHECK_THAT(error_of("cpu", CommKind::nccl),
             Contains("runtime.comm nccl needs the CUDA backend, but the backend is cpu"));
  CHECK_THAT(error_of("cpu64", CommKind::nccl), Contains("but the backend is cpu64"));
  CHECK_THAT(error_of("cuda", CommKind::mpi),
             Contains("runtime.comm mpi carries host memory, but the backend is cuda"));
#ifndef MODA_HAVE_NCCL
  CHECK_THAT(error_of("cuda", CommKind::nccl), Contains("this build has no NCCL"));
#endif
}
