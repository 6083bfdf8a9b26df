"""Markdown → a small complete HTML document, with markdown-it-py.

The "js-default" preset (CommonMark plus tables and strikethrough) has `html` off, so raw HTML
in the source is escaped, never passed through, and it refuses javascript:/vbscript:/data: links.
The document's <title> is the text of the first heading ("Document" without one). A
Content-Security-Policy meta tag forbids scripts as a second line of defence.

markdown-it's inline parser is quadratic on some inputs (20,000 "![" take seconds, 200,000 take
minutes: every unclosed bracket rescans the rest of its paragraph). Parsing therefore runs on a
step budget proportional to the input, reports progress (and so can be cancelled) as it goes,
and refuses, as "too_large", input that would exhaust it; the output is capped likewise, against
reference links that repeat one long URL a million times.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

from .base import ConversionError, Options, Output, Progress, current_limits, fmt_int
from .registry import register

_BLOCKS_PER_REPORT = 500
# Ordinary Markdown takes under 2 inline steps per character; pathological brackets take
# hundreds per character, growing with the input.
STEPS_PER_CHAR = 20
BASE_STEPS = 1_000_000
_STEPS_PER_REPORT = 100_000
# Markdown to HTML grows 1-6x (a table of one-letter cells is the worst ordinary case).
OUTPUT_PER_INPUT = 20
BASE_OUTPUT = 1024 * 1024
_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src * data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ max-width: 46rem; margin: 2rem auto; padding: 0 1rem; font: 16px/1.5 system-ui, sans-serif; }}
pre, code {{ font-family: ui-monospace, monospace; background: #f4f4f4; }}
pre {{ padding: .75rem; overflow-x: auto; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: .25rem .5rem; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
"""


class _Budget:
    """Counts the inline parser's steps; reports progress, refuses input that would take too long."""

    def __init__(self, text_length: int, progress: Progress) -> None:
        self.limit = BASE_STEPS + STEPS_PER_CHAR * text_length
        self.steps = 0
        self.progress = progress

    def step(self) -> None:
        self.steps += 1
        if self.steps % _STEPS_PER_REPORT == 0:
            if self.steps > self.limit:
                detail = "the Markdown is too complex to render (thousands of unclosed brackets)"
                raise ConversionError("too_large", detail)
            self.progress(15 + 35 * self.steps // self.limit, "parsing")

    def install(self, md: MarkdownIt) -> None:
        # A first inline rule that never matches sees every ordinary step; skipToken (an
        # instance attribute, so only this parser is affected) sees the bracket rescans.
        def count_rule(state: StateInline, silent: bool) -> bool:
            self.step()
            return False

        md.inline.ruler.before("text", "hubbub_budget", count_rule)
        skip_token = md.inline.skipToken

        def counted_skip_token(state: StateInline) -> None:
            self.step()
            skip_token(state)

        md.inline.skipToken = counted_skip_token  # type: ignore[method-assign]


def _estimated_size(tokens: list[Token]) -> int:
    """A lower bound of the rendered size: every token's text and attributes, before rendering."""
    total = 0
    for token in tokens:
        total += len(token.content) + sum(len(str(value)) for value in token.attrs.values())
        if token.children:
            total += _estimated_size(token.children)
    return total


def _title(tokens: list[Token]) -> str:
    for index, token in enumerate(tokens[:-1]):
        if token.type == "heading_open":
            inline = tokens[index + 1]
            text = "".join(
                child.content for child in inline.children or [] if child.type in ("text", "code_inline")
            ).strip()
            if text:
                return text
    return "Document"


@register("md", "html")
def md_to_html(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    limit = current_limits().max_markdown_bytes
    size = src.stat().st_size
    if size > limit:
        raise ConversionError(
            "too_large", f"the Markdown is {fmt_int(size)} bytes; the limit is {fmt_int(limit)}"
        )
    progress(5, "reading Markdown")
    try:
        text = src.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConversionError("corrupt", f"the Markdown is not UTF-8 text (byte {exc.start})") from exc
    progress(15, "parsing")
    md = MarkdownIt("js-default")
    _Budget(len(text), progress).install(md)
    env: dict[str, Any] = {}
    tokens = md.parse(text, env)
    progress(50, "rendering")
    max_output = BASE_OUTPUT + OUTPUT_PER_INPUT * size
    too_long = ConversionError("too_large", f"the HTML would be over {fmt_int(max_output)} characters")
    if _estimated_size(tokens) > max_output:  # before rendering a paragraph into one huge string
        raise too_long
    written = 0
    with dst.open("w", encoding="utf-8", newline="\n") as out:

        def write(chunk: str) -> None:
            nonlocal written
            written += len(chunk)
            if written > max_output:
                raise too_long
            out.write(chunk)

        write(_TEMPLATE.format(title=html.escape(_title(tokens))))
        # Render in runs of top-level blocks so that a long document reports (and can be
        # cancelled) as it goes; block tokens at level 0 close a top-level block.
        start = 0
        blocks = 0
        for index, token in enumerate(tokens):
            if token.level == 0 and token.nesting <= 0:
                blocks += 1
                if blocks % _BLOCKS_PER_REPORT == 0:
                    write(md.renderer.render(tokens[start : index + 1], md.options, env))
                    start = index + 1
                    progress(50 + 49 * index // len(tokens), f"rendering block {fmt_int(blocks)}")
        write(md.renderer.render(tokens[start:], md.options, env))
        write("</body>\n</html>\n")
    progress(100, "done")
    return Output("html", "text/html; charset=utf-8")
