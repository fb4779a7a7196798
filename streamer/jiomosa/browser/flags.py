"""Chromium's command line for a headless browser on a closed-network server (no Selenium here:
the browser pod's agent starts Chromium itself)."""

from __future__ import annotations

# Flags a headless Chromium needs on a closed-network server running as root.
CHROME_ARGS: tuple[str, ...] = (
    "--headless=new",
    "--no-sandbox",  # root in a container: the setuid sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # /dev/shm is tiny in containers
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",  # no calls home: they hang on a closed network
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",
    "--use-mock-keychain",
    "--remote-allow-origins=*",
    # WebRTC could otherwise reach LAN addresses around the Fetch-based URL policy.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    # Keep rendering at full speed although no window is visible.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,"
    "CalculateNativeWinOcclusion,InterestFeedContentSuggestions,PrivacySandboxSettings4",
)
