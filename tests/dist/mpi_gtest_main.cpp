// gtest main for tests run under mpirun: a test that fails (or throws) on any rank ends the whole
// job at once with a non-zero status, so the other ranks cannot wait forever in a collective that
// the failing rank will never reach.
#include <gtest/gtest.h>

#include "dist/communicator.h"

namespace {

class AbortJobOnFailure : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (!info.result()->Failed()) return;
    std::fprintf(stderr, "rank %d: %s.%s failed; ending the job\n",
                 moex::dist::Communicator::world().rank(), info.test_suite_name(), info.name());
    moex::dist::Communicator::abort_job(1);
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  moex::dist::Communicator::world();  // MPI_Init before any test, so every rank joins the job
  // Appended after the default printer: the failure's message is printed before the job ends.
  ::testing::UnitTest::GetInstance()->listeners().Append(new AbortJobOnFailure);
  return RUN_ALL_TESTS();
}
