// moex serve --model DIR [--device cpu|cuda[:N]] [--host H] [--port P] [--max-batch B] ...
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "args.h"
#include "command.h"
#include "core/stop_signals.h"
#include "model/model_io.h"
#include "model_dir.h"
#include "serve/server.h"

namespace {

std::atomic<bool> g_stop{false};
// The first signal drains (a watcher thread acts on it); a second ends the process at once, the
// requests still running with it.
void on_signal(int sig) {
  if (!g_stop.exchange(true)) return;
  // No stdio (another thread may hold its lock) and no MPI (not from this thread): under mpirun
  // a rank that exits without MPI_Finalize ends the job.
  static const char kMessage[] = "moex serve: second signal: exiting without draining\n";
  [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  std::_Exit(128 + sig);
}

int run_serve(const std::vector<std::string>& argv) {
  const moex::cli::Args args(
      argv,
      {"model", "device", "host", "port", "model-name", "max-batch", "step-tokens", "block-size",
       "kv-blocks", "max-context", "max-waiting", "cors-origin", "tp"},
      {"help", "no-cuda-graphs", "no-prefix-caching", "expert-slicing"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex serve --model DIR [--device cpu|cuda[:N]] [--host 127.0.0.1] [--port 8000]\n"
        "                  [--model-name NAME] [--max-batch 8] [--step-tokens 512]\n"
        "                  [--block-size 16] [--kv-blocks N] [--max-context N] [--max-waiting "
        "256]\n"
        "                  [--cors-origin '*'] [--no-cuda-graphs] [--no-prefix-caching]\n"
        "                  [--tp N [--expert-slicing]]\n"
        "  An OpenAI-compatible server: POST /v1/completions and /v1/chat/completions (streamed\n"
        "  with \"stream\": true), GET /v1/models, /health, /metrics. Requests name the model as\n"
        "  --model-name (default: the directory's name). Continuous batching of up to --max-batch\n"
        "  sequences; prompts are prefilled in chunks of at most --step-tokens per step.\n"
        "  --kv-blocks sizes the KV cache (default: max-batch sequences of the full context).\n"
        "  --cors-origin: the Access-Control-Allow-Origin browsers get (default '*'; '' for "
        "none).\n"
        "  On a GPU, decode steps replay one captured CUDA graph per batch size; --no-cuda-graphs\n"
        "  runs every step op by op (for debugging).\n"
        "  A prompt that starts with whole KV blocks (--block-size tokens) of an earlier prompt\n"
        "  reuses their keys and values (prefix caching); --no-prefix-caching computes them.\n"
        "  Ctrl-C / SIGTERM: stops taking requests, finishes the running ones, exits.\n"
        "  --tp N under mpirun -np N: the model split over the N ranks (tensor parallelism; a\n"
        "  GPU each with --device cuda); rank 0 serves, the others run its steps.\n"
        "  --expert-slicing: each expert's hidden width split over the N ranks too (each reads\n"
        "  1/N of every expert); without it every rank holds every expert whole.\n");
    return 0;
  }
  moex::serve::ServerOptions o;
  o.model_dir = args.require("model");
  o.device = moex::Device::parse(args.get("device", "cpu"), "--device");
  o.host = args.get("host", "127.0.0.1");
  const int64_t port = args.get_int("port", 8000);
  MOEX_CHECK(port >= 0 && port <= 65535, "--port must be in [0, 65535], got ", port);
  o.port = static_cast<int>(port);
  o.model_name = args.get("model-name", "");
  o.scheduler.max_batch = args.get_int("max-batch", 8);
  o.scheduler.step_tokens = args.get_int("step-tokens", 512);
  o.scheduler.block_size = args.get_int("block-size", 16);
  o.scheduler.num_blocks = args.get_int("kv-blocks", 0);
  o.scheduler.max_context = args.get_int("max-context", 0);
  o.scheduler.cuda_graphs = !args.flag("no-cuda-graphs");
  o.scheduler.prefix_caching = !args.flag("no-prefix-caching");
  o.max_waiting = args.get_int("max-waiting", 256);
  MOEX_CHECK(o.max_waiting >= 0, "--max-waiting must be >= 0, got ", o.max_waiting);
  o.cors_origin = args.get("cors-origin", "*");
  const moex::cli::ServingLayout layout =
      moex::cli::serving_layout(args.get_int("tp", 1), o.device, args.flag("expert-slicing"));
  o.device = layout.device;
  o.tp = layout.tp;
  if (!layout.is_root()) {
    // Rank 0 takes the requests, drains on a signal and then ends the steps this rank mirrors.
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGTERM, SIG_IGN);
    auto model = moex::model::load_model(o.model_dir, o.device, o.tp);
    moex::infer::Scheduler scheduler(*model, o.scheduler);
    scheduler.mirror();
    return 0;
  }

  moex::serve::Server server(o);
  const int bound = server.bind();
  // Scripts read the port from this line (with --port 0 it is the one the system chose).
  std::printf("{\"listening\": \"http://%s:%d\", \"model\": \"%s\"}\n", o.host.c_str(), bound,
              server.model_name().c_str());
  std::fflush(stdout);
  const moex::StopSignalHandlers handlers(on_signal);
  std::atomic<bool> served{false};
  std::thread watcher([&] {
    while (!served) {
      if (g_stop) {
        server.shutdown();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  server.serve();
  served = true;
  watcher.join();
  return 0;
}

const moex::cli::Command kServe("serve", "an OpenAI-compatible HTTP server for a model", run_serve);

}  // namespace
