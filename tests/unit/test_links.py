"""Telegram message links read as (chat, message id), and links that name no message
refused with a reason."""

from __future__ import annotations

import pytest

from tgdl.contracts.links import MessageLink, looks_like_link, parse_link


@pytest.mark.parametrize(("link", "chat", "message"), [
    ("https://t.me/somechannel/1234", "somechannel", 1234),
    ("t.me/somechannel/1234", "somechannel", 1234),
    ("http://www.t.me/SomeChannel/5?comment=3", "SomeChannel", 5),
    ("https://telegram.me/somechannel/1234?comment=9#top", "somechannel", 1234),
    ("https://telegram.dog/some_chan_1/8", "some_chan_1", 8),
    ("https://t.me/somechannel/77/1234", "somechannel", 1234),  # a forum topic's message
    ("https://t.me/s/somechannel/1234", "somechannel", 1234),  # the web preview
    ("https://t.me/c/1234567890/55", "-1001234567890", 55),
    ("https://t.me/c/1234567890/3/55", "-1001234567890", 55),
    ("  https://T.ME/somechannel/1234/  ", "somechannel", 1234),
    ("tg://resolve?domain=somechannel&post=1234", "somechannel", 1234),
    ("tg://privatepost?channel=1234567890&post=55", "-1001234567890", 55),
])
def test_a_message_link_names_its_chat_and_message(link: str, chat: str, message: int):
    assert looks_like_link(link)
    assert parse_link(link) == MessageLink(chat, message)


@pytest.mark.parametrize(("link", "single"), [
    ("https://t.me/chan/5", False), ("https://t.me/chan/5?single", True),
    ("t.me/c/123/5?single&comment=2", True), ("tg://resolve?domain=chan&post=5&single", True),
    ("tg://privatepost?channel=123&post=5", False),
])
def test_single_says_the_message_alone_not_its_album(link: str, single: bool):
    assert parse_link(link).single is single


@pytest.mark.parametrize(("link", "why"), [
    ("https://t.me/somechannel", "names no message"),
    ("https://t.me/+AbCdEf123", "names no message"),
    ("https://t.me/joinchat/AbCdEf/12", "not a chat's username"),
    ("https://t.me/abc/12", "not a chat's username"),  # usernames have 4 characters or more
    ("https://t.me/1channel/12", "not a chat's username"),
    ("https://t.me/somechannel/abc", "message id 'abc' is not a number"),
    ("https://t.me/somechannel/0", "message id '0' is not a number"),
    ("https://t.me/somechannel/99999999999999999999", "is not a number"),
    ("https://t.me/c/12ab/5", "chat id '12ab' is not a number"),
    ("https://t.me/c/123", "t.me/c/<chat>/<message>"),
    ("https://example.com/t.me/somechannel/1", "not a t.me link"),
    ("ftp://t.me/somechannel/1", "not a t.me link"),
    ("tg://resolve?domain=somechannel", "no post"),
    ("tg://join?invite=abc", "tg://resolve?domain=<chat>&post=<message>"),
])
def test_a_link_that_names_no_message_is_refused_saying_why(link: str, why: str):
    with pytest.raises(ValueError, match=None) as refused:
        parse_link(link)
    assert why in str(refused.value)


@pytest.mark.parametrize("text", ["12", "15-20", "somechannel/12", "", "tme/x/1"])
def test_ids_and_ranges_are_not_links(text: str):
    assert not looks_like_link(text)
