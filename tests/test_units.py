"""Pure logic: URL policy, settings, validation, JPEG header parsing."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
from pathlib import Path

import pytest
from PIL import Image

from jiomosa.core import validation as v
from jiomosa.core.settings import Settings, SettingsError, env_var
from jiomosa.core.types import jpeg_size
from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected
from jiomosa.frames.hub import reencode

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ip,allowed", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.31.255.255", False),
    ("172.32.0.1", True), ("192.168.0.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("::1", False), ("fe80::1", False), ("fc00::1", False),
    ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True), ("224.0.0.1", False),
    ("0.0.0.0", False), ("64:ff9b::a00:1", False),
    # IPv6 forms judged by the IPv4 they embed (issue 10); more in tests/test_urlpolicy.py.
    ("64:ff9b:1::a9fe:a9fe", False), ("2002:a9fe:a9fe::", False),
    ("::ffff:0:169.254.169.254", False), ("::127.0.0.1", False), ("::a9fe:a9fe", False),
    ("2001::5601:5601", False), ("2002:808:808::", True), ("64:ff9b::808:808", True),
    ("192.0.2.1", False), ("198.51.100.1", False), ("203.0.113.1", False),
    ("198.18.0.1", False), ("ff0e::1", False),
])
def test_ip_policy(ip: str, allowed: bool) -> None:
    assert UrlPolicy().ip_allowed(ipaddress.ip_address(ip)) is allowed


def test_allow_list_exempts_hosts_and_networks() -> None:
    policy = UrlPolicy.from_allow_list(["127.0.0.5", "10.1.0.0/16", "Intranet.Example."])
    assert policy.ip_allowed(ipaddress.ip_address("127.0.0.5"))
    assert not policy.ip_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.ip_allowed(ipaddress.ip_address("10.1.200.1"))
    assert not policy.ip_allowed(ipaddress.ip_address("10.2.0.1"))
    assert policy.host_allowed_by_name("intranet.example") is True
    assert policy.host_allowed_by_name("other.example") is None


@pytest.mark.parametrize("url,fragment", [
    ("", "required"), ("ftp://example.com/", "only http"), ("javascript:alert(1)", "only http"),
    ("http://", "no host"), ("http://a b/", "whitespace"), ("http://x:99999/", "malformed"),
    ("http://u:p@example.com/", "credentials"), ("http://example.com/" + "a" * 9000, "longer"),
])
def test_url_syntax(url: str, fragment: str) -> None:
    with pytest.raises(UrlRejected, match=fragment):
        UrlPolicy().check_syntax(url)


def test_literal_ip_forms_are_recognised() -> None:
    policy = UrlPolicy()
    for host in ("2130706433", "0x7f000001", "127.1", "017700000001", "[::1]"):
        assert policy.host_allowed_by_name(host) is False, host


async def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(UrlRejected, match="does not resolve"):
        await UrlPolicy().check("http://no-such-host.invalid/")


def test_settings_from_env() -> None:
    s = Settings.from_env({"JIOMOSA_MAX_SESSIONS": "3", "JIOMOSA_ALLOW_HOSTS": "a, b,",
                           "JIOMOSA_IDLE_TIMEOUT": "1.5", "JIOMOSA_CHROME_ARGS": "--x --y"})
    assert (s.max_sessions, s.allow_hosts, s.idle_timeout) == (3, ("a", "b"), 1.5)
    assert s.extra_chrome_args == ("--x", "--y")
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("env,fragment", [
    ({"JIOMOSA_MAX_SESSIONS": "many"}, "JIOMOSA_MAX_SESSIONS"),
    ({"JIOMOSA_MAX_SESSIONS": "0"}, "JIOMOSA_MAX_SESSIONS"),
    ({"JIOMOSA_BACKEND": "mars"}, "JIOMOSA_BACKEND"),
    ({"JIOMOSA_BACKEND": "grid"}, "JIOMOSA_GRID_URL"),
    ({"JIOMOSA_DEFAULT_QUALITY": "95"}, "JIOMOSA_DEFAULT_QUALITY"),
])
def test_bad_settings_name_their_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(Settings):
        assert env_var(f.name) in doc, env_var(f.name)


def test_validation_numbers() -> None:
    assert v.number({"x": 3}, "x") == 3.0
    for bad in ("3", True, None, float("nan"), float("inf"), [1]):
        with pytest.raises(v.BadRequest):
            v.number({"x": bad}, "x")
    with pytest.raises(v.BadRequest, match="whole number"):
        v.integer({"fps": 2.5}, "fps", 1, 60)
    assert v.integer({"fps": 30.0}, "fps", 1, 60) == 30


def _jpeg(w: int, h: int, quality: int = 80, color: tuple[int, int, int] = (200, 10, 10)
          ) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), color).save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_jpeg_size_reads_the_header() -> None:
    assert jpeg_size(_jpeg(321, 123)) == (321, 123)
    with pytest.raises(ValueError):
        jpeg_size(b"not a jpeg at all")


def test_reencode_lowers_size() -> None:
    noisy = Image.effect_noise((128, 128), 64).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, "JPEG", quality=90)
    assert len(reencode(out.getvalue(), 20)) < len(out.getvalue())
