"""Rich-text sanitising: an explicit allow-list of tags, attributes and URL schemes (nh3)."""

from __future__ import annotations

import functools

import nh3

ALLOWED_TAGS = frozenset(
    {
        "p",
        "br",
        "strong",
        "em",
        "b",
        "i",
        "u",
        "ul",
        "ol",
        "li",
        "h2",
        "h3",
        "h4",
        "blockquote",
        "a",
        "code",
        "pre",
    }
)
ALLOWED_ATTRIBUTES = {"a": frozenset({"href", "title"})}
ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"
# Removed together with their content: what is inside them is code or markup, never prose.
DROPPED_WITH_CONTENT = frozenset(
    {
        "script",
        "style",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "noscript",
        "noembed",
        "noframes",
        "template",
        "svg",
        "math",
        "textarea",
        "select",
        "title",
        "xmp",
    }
)


@functools.cache
def _cleaner() -> nh3.Cleaner:
    # Built on first use rather than at import; Cleaner is immutable and safe to share.
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(ALLOWED_URL_SCHEMES),
        # Relative URLs are refused too: only the schemes above may appear in an href.
        url_relative="deny",
        link_rel=LINK_REL,
        strip_comments=True,
    )


def sanitize(html: str) -> str:
    """Returns `html` with everything outside the allow-list removed."""
    return _cleaner().clean(html)
