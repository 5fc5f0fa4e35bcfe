# Writes OUTPUT, the C++ source of moda::version() and moda::build_commit(), from the git commit
# of SOURCE_DIR. Run at every build (CMakeLists.txt), not once at configure time, so the commit
# cannot go stale; the file is rewritten only when its text changes, so an unchanged commit
# recompiles nothing. Outside a git checkout (a source archive) the commit is "unknown".
execute_process(COMMAND git -C "${SOURCE_DIR}" rev-parse --short=12 HEAD
                OUTPUT_VARIABLE commit RESULT_VARIABLE failed
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(failed)
  set(commit "unknown")
else()
  # Tracked files that differ from the commit (exit status 1; other failures say nothing): the
  # binary is not that commit's.
  execute_process(COMMAND git -C "${SOURCE_DIR}" diff --quiet HEAD --
                  RESULT_VARIABLE dirty OUTPUT_QUIET ERROR_QUIET)
  if(dirty EQUAL 1)
    string(APPEND commit "-dirty")
  endif()
endif()
file(WRITE "${OUTPUT}.new" "// Written by cmake/build_info.cmake at build time.
#include \"moda/build_info.hpp\"

namespace moda {

std::string_view version() { return \"${VERSION}\"; }
std::string_view build_commit() { return \"${commit}\"; }

}  // namespace moda
")
configure_file("${OUTPUT}.new" "${OUTPUT}" COPYONLY)
file(REMOVE "${OUTPUT}.new")
