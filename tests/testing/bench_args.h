// "key=value" integer arguments of the benchmark programs.
//
//   std::map<std::string, int64_t> a = {{"n", 256}, {"reps", 3}};
//   if (!peft::testing::parse_int_args(argc, argv, &a)) return 2;
#ifndef PEFT_TESTS_TESTING_BENCH_ARGS_H_
#define PEFT_TESTS_TESTING_BENCH_ARGS_H_

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace peft::testing {

/// Sets a[key] from each "key=value" in argv[1..]; the keys must already be
/// in `a` (their defaults) and the values must be whole integers. On the
/// first bad argument prints why to stderr and returns false.
inline bool parse_int_args(int argc, char** argv, std::map<std::string, int64_t>* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    const size_t eq = s.find('=');
    if (eq == std::string::npos || a->count(s.substr(0, eq)) == 0) {
      std::string keys;
      for (const auto& kv : *a) keys += " " + kv.first;
      std::fprintf(stderr, "unknown argument %s (key=value with a key among:%s)\n", argv[i], keys.c_str());
      return false;
    }
    const std::string value = s.substr(eq + 1);
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno == ERANGE) {
      std::fprintf(stderr, "argument %s: '%s' is not an integer\n", argv[i], value.c_str());
      return false;
    }
    (*a)[s.substr(0, eq)] = x;
  }
  return true;
}

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_BENCH_ARGS_H_
