// Single-precision GEMM: oneDNN (dnnl_sgemm) against OpenBLAS (cblas_sgemm) on the shapes an MoE
// layer runs (token rows x expert hidden x model dim), in the three transpose forms that forward
// (x·W^T), input gradient (dy·W) and weight gradient (dy^T·x) use. Prints one JSON object per line.
//
// OpenBLAS reads OPENBLAS_CORETYPE when it loads, so compare with and without it by running the
// binary twice; both libraries run in the same process so their numbers are side by side.
#include <cblas.h>
#include <dnnl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct Shape {
  long m, n, k;
};

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
double best_seconds(F&& f, int reps) {
  f();  // warm-up (packing buffers, thread pools)
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = seconds_now();
    f();
    best = std::min(best, seconds_now() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  const std::vector<Shape> shapes = {{4096, 1024, 256},
                                     {512, 2048, 512},
                                     {2048, 512, 2048},
                                     {1024, 1024, 1024},
                                     {256, 4096, 1024}};
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf(
      "{\"openblas_config\": \"%s\", \"openblas_core\": \"%s\", \"openblas_threads\": %d}\n",
      openblas_get_config(), openblas_get_corename(), openblas_get_num_threads());
  for (const Shape& s : shapes) {
    std::vector<float> a(s.m * s.k), b(s.k * s.n), c_blas(s.m * s.n), c_dnnl(s.m * s.n);
    for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.37 * i);
    for (size_t i = 0; i < b.size(); ++i) b[i] = std::cos(0.11 * i);
    // "nn": C = A B; "nt": C = A B^T (forward x·W^T); "tn": C = A^T B (weight gradient).
    for (const char* form : {"nn", "nt", "tn"}) {
      const bool ta = form[0] == 't', tb = form[1] == 't';
      const long lda = ta ? s.m : s.k, ldb = tb ? s.k : s.n, ldc = s.n;
      const double t_blas = best_seconds(
          [&] {
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                        tb ? CblasTrans : CblasNoTrans, s.m, s.n, s.k, 1.0f, a.data(), lda,
                        b.data(), ldb, 0.0f, c_blas.data(), ldc);
          },
          reps);
      const double t_dnnl = best_seconds(
          [&] {
            dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', s.m, s.n, s.k, 1.0f, a.data(), lda, b.data(),
                       ldb, 0.0f, c_dnnl.data(), ldc);
          },
          reps);
      double max_diff = 0;
      for (size_t i = 0; i < c_blas.size(); ++i)
        max_diff = std::max(max_diff, double(std::fabs(c_blas[i] - c_dnnl[i])));
      const double flops = 2.0 * s.m * s.n * s.k;
      std::printf(
          "{\"m\": %ld, \"n\": %ld, \"k\": %ld, \"form\": \"%s\", \"openblas_coretype\": \"%s\", "
          "\"openblas_gflops\": %.1f, \"dnnl_gflops\": %.1f, \"max_abs_diff\": %.2e}\n",
          s.m, s.n, s.k, form, coretype ? coretype : "", flops / t_blas * 1e-9,
          flops / t_dnnl * 1e-9, max_diff);
      std::fflush(stdout);
    }
  }
  return 0;
}
