// GPT-2's byte-level pieces: the regex split of the ByteLevel pre-tokenizer, written by hand,
// and the reversible map from bytes to printable code points.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moex::data {

// Splits `text` as the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does; the pieces are views into `text` and concatenate back to it.
std::vector<std::string_view> gpt2_split(std::string_view text);

// Each byte of `bytes` as its printable stand-in (GPT-2 bytes_to_unicode), UTF-8 encoded.
std::string byte_level_encode(std::string_view bytes);

// The inverse: returns false (leaving *bytes partly written) if a char has no byte.
bool byte_level_decode(std::string_view text, std::string* bytes);

}  // namespace moex::data
