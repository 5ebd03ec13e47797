// UTF-8 text helpers with JavaScript's meaning of whitespace, case and length: the chat-template
// renderer matches @huggingface/jinja (what transformers.js and the Hub's widgets use), whose
// string operations are JavaScript's.
#pragma once

#include <cstdint>
#include <string>

namespace moex::serve::jinja {

// Decodes the code point at `pos` into `cp` and returns its byte length (1 for a malformed byte,
// which decodes as itself so that no input is lost).
size_t decode_utf8(const std::string& text, size_t pos, uint32_t& cp);
void append_utf8(std::string& out, uint32_t cp);

// JavaScript's \s and String.prototype.trim set (Unicode White_Space plus U+FEFF).
bool is_js_whitespace(uint32_t cp);
// Byte length of the whitespace code point at `pos`, 0 if none there.
size_t js_whitespace_at(const std::string& text, size_t pos);
// Byte offset where trailing whitespace begins.
size_t js_trim_end_offset(const std::string& text);
std::string js_trim_start(const std::string& text);
std::string js_trim_end(const std::string& text);
std::string js_trim(const std::string& text);

// Case mapping for ASCII, Latin-1, Latin Extended-A pairs, Greek and Cyrillic (no locale rules).
std::string to_upper(const std::string& text);
std::string to_lower(const std::string& text);

// String length in UTF-16 code units, as JavaScript's .length counts it.
int64_t utf16_length(const std::string& text);
size_t code_point_count(const std::string& text);

}  // namespace moex::serve::jinja
