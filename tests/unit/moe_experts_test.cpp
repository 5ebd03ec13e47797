// Expert stages on a fixed plan: permute -> experts -> combine and their backward against central
// finite differences in double (padded capacity buffer with drops, and the packed dropless one).
#include <gtest/gtest.h>

#include <vector>

#include "gradcheck.h"
#include "moe/dispatch_plan.h"
#include "moe/experts.h"

namespace moex::moe {
namespace {

using moex::testing::numeric_gradient;
using moex::testing::project;
using moex::testing::random_vector;
using moex::testing::relative_l2;

void check_experts_grad(ExpertActivation act, bool dropless, bool exact) {
  const int64_t num_t = 7, d = 4, f = 3, num_e = 3;
  const int k = 2;
  const FfnShape shape{d, f, act, exact};
  const int64_t f1 = shape.first_rows();
  // Skewed selection so expert 0 overflows C = 4 and expert 2 is empty in dropless mode.
  std::vector<int32_t> idx = {0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1};
  DispatchParams params;
  params.capacity = 4;
  params.dropless = dropless;
  DispatchPlan plan;
  build_dispatch_plan<double>(idx.data(), nullptr, num_t, num_e, k, params, &plan);
  if (!dropless) {
    ASSERT_GT(plan.num_dropped, 0);
  }

  std::vector<double> x = random_vector<double>(num_t * d, 1);
  std::vector<double> w1 = random_vector<double>(num_e * f1 * d, 2);
  std::vector<double> w2 = random_vector<double>(num_e * d * f, 3);
  std::vector<double> gates = random_vector<double>(num_t * k, 4, 0.1, 1.0);
  const std::vector<double> w = random_vector<double>(num_t * d, 5);
  const int64_t rows = plan.num_rows();
  std::vector<double> buf(rows * d), h(rows * f1), a(rows * f), out(rows * d), y(num_t * d);
  auto loss = [&] {
    moe_permute<double>(x.data(), plan, d, buf.data());
    experts_forward<double>(shape, plan, buf.data(), w1.data(), w2.data(), h.data(), a.data(),
                            out.data());
    moe_combine<double>(out.data(), plan, gates.data(), d, y.data());
    return project(y, w);
  };
  loss();
  std::vector<double> dout(rows * d), dgates(num_t * k), dbuf(rows * d), dw1(w1.size(), 7.0),
      dw2(w2.size(), 7.0);
  std::vector<double> dx(num_t * d, 0.0), ws(experts_workspace_elems(shape, plan));
  moe_combine_backward<double>(w.data(), out.data(), plan, gates.data(), d, dout.data(),
                               dgates.data());
  experts_backward<double>(shape, plan, buf.data(), w1.data(), w2.data(), h.data(), dout.data(),
                           ws.data(), dbuf.data(), dw1.data(), dw2.data());
  moe_permute_backward<double>(dbuf.data(), plan, d, dx.data());
  EXPECT_LT(relative_l2(dx, numeric_gradient(x, loss)), 1e-6);
  EXPECT_LT(relative_l2(dw1, numeric_gradient(w1, loss)), 1e-6);  // empty experts' gradients zeroed
  EXPECT_LT(relative_l2(dw2, numeric_gradient(w2, loss)), 1e-6);
  EXPECT_LT(relative_l2(dgates, numeric_gradient(gates, loss)), 1e-6);
}

TEST(ExpertsBackward, GeluCapacity) {
  check_experts_grad(ExpertActivation::kGelu, false, false);
}
TEST(ExpertsBackward, GeluExactDropless) {
  check_experts_grad(ExpertActivation::kGelu, true, true);
}
TEST(ExpertsBackward, SwigluCapacity) {
  check_experts_grad(ExpertActivation::kSwiGLU, false, false);
}
TEST(ExpertsBackward, SwigluDropless) {
  check_experts_grad(ExpertActivation::kSwiGLU, true, false);
}

TEST(Experts, PermuteZeroesPaddingAndGathersTokens) {
  const std::vector<int32_t> idx = {1, 0, 1};  // top-1, E = 2, C = 2
  DispatchParams params;
  params.capacity = 2;
  DispatchPlan plan;
  build_dispatch_plan<double>(idx.data(), nullptr, 3, 2, 1, params, &plan);
  const std::vector<double> x = {10, 11, 20, 21, 30, 31};  // token t holds (10(t+1), 10(t+1)+1)
  std::vector<double> buf(plan.num_rows() * 2, -99.0);     // poisoned
  moe_permute<double>(x.data(), plan, 2, buf.data());
  EXPECT_EQ(buf, (std::vector<double>{20, 21, 0, 0, 10, 11, 30, 31}));  // [E=2, C=2, d=2]
}

}  // namespace
}  // namespace moex::moe
