// Bible text from SWORD modules (Debian's sword-text-* packages), read through diatheke's plain
// output, for monolingual text and verse-aligned parallel text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moex::data {

struct Verse {
  std::string book;  // as the module's versification names it: "Genesis", "I Samuel"
  int chapter = 0;
  int verse = 0;
  std::string text;
  std::string key() const;  // "Genesis 1:1"
};

// Parses `diatheke -f plain` output: "Book C:V: text" lines, continuation lines (poetry)
// appended to the verse, markup tags (<H1234> Strong's numbers, OSIS <title>/<l>) removed,
// whitespace collapsed, the "(module)" trailer ignored. A line after a blank line that precedes
// a verse key (a psalm's title) belongs to that verse; text after the last verse (appendices)
// is dropped, as are empty verses.
std::vector<Verse> parse_diatheke_plain(std::string_view text);

// Runs `diatheke -b MODULE -f plain -k "Genesis 1:1-Revelation 22:21"` and returns its output.
// A missing diatheke or module is an Error naming the module and the package to install.
std::string export_sword_module(const std::string& module);

}  // namespace moex::data
