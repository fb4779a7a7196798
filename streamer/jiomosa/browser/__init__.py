"""Browser control shared by the streamer and the operator: Selenium starts and quits browsers
(``driver``), CDP carries frames, input and navigation (``cdp``, ``page``)."""
