// NFC as UAX #15 defines it: decompose canonically (Hangul arithmetically), put each run of
// non-starters in canonical order (a stable sort by combining class), then compose each
// unblocked pair that has a primary composite.
#include <algorithm>
#include <tuple>
#include <vector>

#include "data/unicode.h"

namespace moex::data {
namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

uint32_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = detail::kCombiningClasses + detail::kNumCombiningClasses;
  const auto* it =
      std::lower_bound(detail::kCombiningClasses, end, cp,
                       [](const detail::CombiningClass& c, uint32_t v) { return c.cp < v; });
  return it != end && it->cp == cp ? it->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    const auto* end = detail::kDecompositions + detail::kNumDecompositions;
    const auto* it =
        std::lower_bound(detail::kDecompositions, end, cp,
                         [](const detail::Decomposition& d, uint32_t v) { return d.cp < v; });
    if (it != end && it->cp == cp) {
      out->insert(out->end(), detail::kDecompositionPool + it->offset,
                  detail::kDecompositionPool + it->offset + it->length);
      return;
    }
  }
  out->push_back(cp);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* end = detail::kCompositions + detail::kNumCompositions;
  const auto* it =
      std::lower_bound(detail::kCompositions, end, std::make_pair(a, b),
                       [](const detail::Composition& c, std::pair<uint32_t, uint32_t> v) {
                         return c.first < v.first || (c.first == v.first && c.second < v.second);
                       });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

// NFC of one valid UTF-8 run, appended to *out.
void nfc_run(std::string_view text, std::string* out) {
  std::vector<uint32_t> cps;
  size_t pos = 0;
  while (pos < text.size()) decompose(utf8_next(text, &pos), &cps);
  std::vector<uint32_t> classes(cps.size());
  for (size_t k = 0; k < cps.size(); ++k) classes[k] = combining_class(cps[k]);
  // Canonical ordering: stable-sort each maximal run of non-starters by class.
  for (size_t k = 0; k < cps.size();) {
    if (classes[k] == 0) {
      ++k;
      continue;
    }
    size_t end = k;
    while (end < cps.size() && classes[end] != 0) ++end;
    if (end - k > 1) {
      std::vector<std::pair<uint32_t, uint32_t>> run;
      for (size_t j = k; j < end; ++j) run.emplace_back(classes[j], cps[j]);
      std::stable_sort(run.begin(), run.end(),
                       [](const auto& x, const auto& y) { return x.first < y.first; });
      for (size_t j = k; j < end; ++j) std::tie(classes[j], cps[j]) = run[j - k];
    }
    k = end;
  }
  // Canonical composition.
  std::vector<uint32_t> composed;
  composed.reserve(cps.size());
  size_t starter = SIZE_MAX;
  uint32_t last_class = 0;
  for (size_t k = 0; k < cps.size(); ++k) {
    const uint32_t c = cps[k], cls = classes[k];
    if (starter != SIZE_MAX &&
        (last_class < cls || (last_class == 0 && composed.size() == starter + 1))) {
      if (const uint32_t comp = compose(composed[starter], c)) {
        composed[starter] = comp;
        continue;
      }
    }
    if (cls == 0) starter = composed.size();
    last_class = cls;
    composed.push_back(c);
  }
  for (uint32_t c : composed) utf8_append(c, out);
}

}  // namespace

std::string nfc_normalize(std::string_view text) {
  // Quick check: below U+0300 nothing decomposes into or composes with something else... except
  // the Latin-1 letters, which are already composed. So text below U+0300 is its own NFC.
  bool simple = true;
  for (size_t k = 0; k < text.size() && simple; ++k) {
    const unsigned char b = static_cast<unsigned char>(text[k]);
    simple = b < 0xCC;  // lead bytes >= 0xCC start code points >= U+0300
  }
  if (simple) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t run_begin = 0, pos = 0;
  while (pos < text.size()) {
    const size_t at = pos;
    const uint32_t cp = utf8_next(text, &pos);
    // utf8_next yields U+FFFD for one ill-formed byte; a real U+FFFD takes three bytes.
    if (cp == kReplacementChar && pos - at == 1) {
      nfc_run(text.substr(run_begin, at - run_begin), &out);
      out.push_back(text[at]);
      run_begin = pos;
    }
  }
  nfc_run(text.substr(run_begin), &out);
  return out;
}

}  // namespace moex::data
