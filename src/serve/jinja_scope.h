// Variable scopes of a render: the globals, then one scope per for loop and macro call, each
// reading through to its parent.
#pragma once

#include <string>
#include <unordered_map>
#include <utility>

#include "serve/jinja_value.h"

namespace moex::serve::jinja {

class Scope {
 public:
  explicit Scope(Scope* parent = nullptr) : parent_(parent) {}
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  // Undefined when no scope up the chain has the name.
  Value lookup(const std::string& name) const {
    for (const Scope* scope = this; scope != nullptr; scope = scope->parent_) {
      auto it = scope->variables_.find(name);
      if (it != scope->variables_.end()) return it->second;
    }
    return Value::undefined();
  }
  // Assigns in this scope (a set inside a loop body does not leak out of the loop).
  void set(const std::string& name, Value value) { variables_[name] = std::move(value); }

 private:
  std::unordered_map<std::string, Value> variables_;
  Scope* parent_;
};

}  // namespace moex::serve::jinja
