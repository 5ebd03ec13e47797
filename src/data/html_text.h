// Plain text out of (X)HTML pages such as the Debian Handbook's: paragraphs of the body, tags
// stripped, entities decoded, whitespace collapsed, navigation bars left out.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moex::data {

// Block elements (p, div, h1-h6, li, pre, dt, dd, tr, br, ...) end a paragraph. Skipped: head,
// script, style, and publican's navigation (class "docnav", id "banner" or "title").
std::vector<std::string> html_paragraphs(std::string_view html);

// &amp; &lt; &gt; &quot; &apos; &nbsp; numeric references and common typographic names; an
// unknown entity is kept as written.
std::string decode_html_entities(std::string_view text);

}  // namespace moex::data
