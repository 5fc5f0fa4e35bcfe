// Catch2 v2 (Debian's catch2 package) provides main() here.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <string>

// ctest runs each test case by name, and catch_discover_tests splits a name at ';' (a CMake list
// separator) into names that match nothing, so such a test would silently never run.
TEST_CASE("no test case name contains a semicolon", "[meta]") {
  for (const Catch::TestCase& test : Catch::getRegistryHub().getTestCaseRegistry().getAllTests()) {
    INFO(test.name);
    CHECK(test.name.find(';') == std::string::npos);
  }
}
