// `moex serve`: an OpenAI-compatible HTTP server over the continuous-batching scheduler.
//   POST /v1/completions, POST /v1/chat/completions   (streamed as server-sent events, or whole)
//   GET  /v1/models, GET /health, GET /metrics          (Prometheus text format)
// One engine thread runs the model (infer/scheduler.h); HTTP handlers submit requests to it and
// turn the tokens it sends back into text (serve/stop_text.h). A bad request gets a 4xx JSON
// error in OpenAI's shape and the server goes on serving everyone else.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "infer/scheduler.h"
#include "model/tensor_parallel.h"

namespace moex::serve {

struct ServerOptions {
  std::string model_dir;
  Device device;
  // The model split over a tensor-parallel group: this server runs on its rank 0, and the other
  // ranks run the steps (infer::Scheduler::mirror). Inactive: the whole model here.
  model::TensorParallel tp;
  std::string model_name;  // what /v1/models lists and requests must name; "" = model_dir's name
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (port() tells which)
  infer::SchedulerOptions scheduler;
  int64_t max_waiting = 256;  // requests queued beyond the running batch; more get 429
  // Concurrent connections (a request holds one until its answer is sent). At least every
  // request the engine may hold (max_waiting + the scheduler's max_batch) plus 16 more, so that
  // the requests past the limit still get their 429 and /health and /metrics still answer; at
  // most 2048 threads (all start with the server).
  int http_threads = 64;
  size_t max_body_bytes = size_t{8} << 20;
  // Access-Control-Allow-Origin of every answer, and CORS preflights answered; "" turns both off.
  // "*" by default, as vLLM and llama.cpp's server do: browser clients work out of the box.
  std::string cors_origin = "*";
};

class Server {
 public:
  // Loads the model, its tokenizer and chat template; errors name the file.
  explicit Server(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds (an error names host:port when it cannot) and returns the port.
  int bind();
  // Serves until shutdown() has drained every request. Call bind() first.
  void serve();
  // Thread-safe, idempotent: new generation requests get 503, running and queued ones finish,
  // then the listener stops and serve() returns.
  void shutdown();

  int port() const;
  const std::string& model_name() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex::serve
