// Writes the synthetic training corpus of tests/train_fixture.h and a training config into DIR,
// with training.out_dir set to OUT_DIR: tests/dist/rank_failure_test.sh uses it to run the moex
// binary under mpirun with an out_dir that only the root rank fails to create.
#include <cstdio>

#include "train_fixture.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const auto corpus = moex::testing::make_corpus(argv[1]);
  std::printf("%s\n", moex::testing::write_config(corpus, argv[2], "").string().c_str());
  return 0;
}
