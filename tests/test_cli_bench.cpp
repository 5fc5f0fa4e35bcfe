// `moda bench attention` refuses bad arguments before it looks for a GPU, with messages that name
// the argument.
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

namespace {

struct Result {
  int status = 0;
  std::string output;
};

Result run_moda(const std::string& args) {
  Result r;
  FILE* pipe = popen((std::string(MODA_BINARY) + " " + args + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[512];
  while (fgets(buf, sizeof buf, pipe) != nullptr) r.output += buf;
  r.status = pclose(pipe);
  return r;
}

}  // namespace

TEST_CASE("moda bench attention: bad arguments are refused by name", "[cli]") {
  const Result placement = run_moda("bench attention --depth-backward middle");
  CHECK(placement.status != 0);
  CHECK(placement.output.find("--depth-backward") != std::string::npos);
  const Result slot_gradients = run_moda("bench attention --slot-gradients pushed");
  CHECK(slot_gradients.status != 0);
  CHECK(slot_gradients.output.find("--slot-gradients") != std::string::npos);
  const Result shape = run_moda("bench attention --shape 4,4096,16,8,64");
  CHECK(shape.status != 0);
  CHECK(shape.output.find("expected six integers B,T,Hq,Hk,d,S") != std::string::npos);
  const Result group = run_moda("bench attention --shape 4,4096,16,6,64,0");
  CHECK(group.status != 0);
  CHECK(group.output.find("Hq must be a multiple of Hk") != std::string::npos);
}
