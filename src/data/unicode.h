// UTF-8 decoding and encoding, and the few Unicode classes the tokenizers need (\p{L}, \p{N},
// White_Space), without std::regex or ICU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moex::data {

constexpr uint32_t kReplacementChar = 0xFFFD;

// Decodes the code point that starts at text[*pos] and advances *pos past it. A byte that does
// not start a valid sequence decodes as U+FFFD and advances by one byte.
uint32_t utf8_next(std::string_view text, size_t* pos);

// Appends the UTF-8 encoding of `cp` (U+FFFD for surrogates and values past U+10FFFF).
void utf8_append(uint32_t cp, std::string* out);

// Replaces every ill-formed subsequence by U+FFFD, one per maximal subpart (as Rust's
// String::from_utf8_lossy and the WHATWG decoder do).
std::string utf8_sanitize(std::string_view bytes);

bool is_valid_utf8(std::string_view bytes);

bool is_letter(uint32_t cp);      // \p{L}
bool is_number(uint32_t cp);      // \p{N}
bool is_whitespace(uint32_t cp);  // White_Space (as \s in Rust's regex and Oniguruma)

// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical
// composition; tables in unicode_nfc_tables.cpp). Bytes that are not valid UTF-8 are kept as
// they are and break composition there.
std::string nfc_normalize(std::string_view text);

namespace detail {
struct CodePointRange {
  uint32_t first, last;  // inclusive
};
extern const CodePointRange kLetterRanges[];
extern const size_t kNumLetterRanges;
extern const CodePointRange kNumberRanges[];
extern const size_t kNumNumberRanges;

struct CombiningClass {
  uint32_t cp, ccc;
};
struct Decomposition {
  uint32_t cp, offset, length;  // full canonical decomposition: kDecompositionPool[offset, +len)
};
struct Composition {
  uint32_t first, second, composite;  // sorted by (first, second)
};
extern const CombiningClass kCombiningClasses[];
extern const size_t kNumCombiningClasses;
extern const uint32_t kDecompositionPool[];
extern const Decomposition kDecompositions[];
extern const size_t kNumDecompositions;
extern const Composition kCompositions[];
extern const size_t kNumCompositions;
}  // namespace detail

}  // namespace moex::data
