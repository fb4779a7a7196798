/*
 * Jiomosa web app: the launcher (site tiles from static/sites.json, a URL box) and the viewer
 * (the remote page on a canvas, fed by Socket.IO; taps, swipes, wheel, keys and text go back).
 *
 * A session's id is its owner's key: it stays in this device's storage, never in the address
 * bar. Someone else's session is only ever shown through a share link (#share=<token>), marked
 * as such and read-only unless its owner granted input (docs/clients.md, *Sharing*).
 *
 * Plain ES5 and XMLHttpRequest on purpose: KaiOS 2.x runs Gecko 48 and old Android WebViews
 * predate fetch and arrow functions. The Socket.IO client is vendored (static/vendor/).
 * docs/clients.md describes the app; docs/protocol.md the events it uses.
 */
(function () {
  'use strict';

  var BASE = location.pathname.replace(/[^\/]*$/, '');  // works behind a path prefix too
  var KEYS = {Enter: 1, Backspace: 1, Tab: 1, Escape: 1, Delete: 1, ArrowUp: 1, ArrowDown: 1,
    ArrowLeft: 1, ArrowRight: 1, Home: 1, End: 1, PageUp: 1, PageDown: 1, ' ': 1};
  var ARROWS = {ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0]};
  var BAR_HEIGHT = 36;  // the viewer's top bar, in CSS pixels
  var isKaiOS = /KAIOS/i.test(navigator.userAgent);

  function $(id) { return document.getElementById(id); }
  function clamp(v, lo, hi) { return v < lo ? lo : v > hi ? hi : v; }
  function now() { return Date.now(); }
  function each(list, fn) { for (var i = 0; i < list.length; i++) fn(list[i], i); }

  var store = (function () {
    try {
      localStorage.setItem('jiomosa.t', '1');
      localStorage.removeItem('jiomosa.t');
      return localStorage;
    } catch (e) {  // private mode, file: pages, old WebViews without DOM storage
      var m = {};
      return {getItem: function (k) { return m.hasOwnProperty(k) ? m[k] : null; },
        setItem: function (k, v) { m[k] = String(v); }, removeItem: function (k) { delete m[k]; }};
    }
  })();

  function request(method, path, body, cb, timeoutMs, token) {
    var xhr = new XMLHttpRequest();
    xhr.open(method, BASE + path, true);
    xhr.timeout = timeoutMs || 30000;
    if (body !== undefined) xhr.setRequestHeader('Content-Type', 'application/json');
    if (token) xhr.setRequestHeader('X-Share-Token', token);
    xhr.onload = function () {
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      cb(xhr.status, data);
    };
    xhr.onerror = function () { cb(0, {error: 'network error'}); };
    xhr.ontimeout = function () { cb(0, {error: 'the server did not answer in time'}); };
    xhr.send(body === undefined ? null : JSON.stringify(body));
  }
  function errorText(status, data) {
    return (data && data.error) ? data.error : (status ? 'error ' + status : 'network error');
  }
  function sessionPath(sid, what) { return 'api/session/' + encodeURIComponent(sid) + '/' + what; }

  // ------------------------------------------------------------------ state
  var state = {
    sid: store.getItem('jiomosa.sid'),
    vpKey: store.getItem('jiomosa.vp') || '',
    title: store.getItem('jiomosa.title') || '',
    url: store.getItem('jiomosa.url') || '',
    search: 'https://duckduckgo.com/html/?q=%s'
  };
  var myShare = null;  // {sid, token}: the share link this device made for its own session
  var prefs = {
    quality: store.getItem('jiomosa.quality') || 'auto',
    fps: store.getItem('jiomosa.fps') || '60',
    stats: store.getItem('jiomosa.stats') !== '0',
    cursor: store.getItem('jiomosa.cursor') ? store.getItem('jiomosa.cursor') === '1' : isKaiOS,
    desktop: store.getItem('jiomosa.desktop') === '1',
    sharp: store.getItem('jiomosa.sharp') === '1'
  };
  function savePref(name, value) {  // value: a string, or a flag stored as '1'/'0'
    prefs[name] = value;
    store.setItem('jiomosa.' + name, value === true ? '1' : value === false ? '0' : value);
  }
  function remember(sid, vpKey) {
    state.sid = sid;
    state.vpKey = vpKey;
    store.setItem('jiomosa.sid', sid);
    store.setItem('jiomosa.vp', vpKey);
  }
  function rememberPage(info) {
    if (!info) return;
    state.title = info.title || info.url || '';
    state.url = info.url || state.url;
    store.setItem('jiomosa.title', state.title);
    store.setItem('jiomosa.url', state.url);
  }
  function forget() {
    state.sid = null;
    myShare = null;
    store.removeItem('jiomosa.sid');
  }

  // ------------------------------------------------------------------ routing
  // #view: this device's own session. #share=<token>: a share link. #view=<id> (older links):
  // only this device's own id opens; adopting any other would send what the visitor types to
  // whoever made the link (session fixation), so it is refused, visibly.
  var VIEW = '#view';
  var NOT_YOURS = 'That link points to a session that is not yours, so it was not opened: ' +
    'anything you typed there would go to whoever sent it. To show you a page, its owner ' +
    'can send you a share link.';
  var shared = null;  // {token, id, input} while showing someone's share link
  function setHash(hash) {  // without a history entry and without a hashchange
    try { history.replaceState(null, '', location.pathname + location.search + hash); }
    catch (e) { location.hash = hash; }
  }
  function route() {
    var h = location.hash, m = /^#share=([A-Za-z0-9_-]{32,128})$/.exec(h), sid;
    shared = m ? {token: m[1], id: null, input: false} : null;
    if (shared) return viewer.start();
    m = /^#view=(.+)$/.exec(h);
    if (m) {
      try { sid = decodeURIComponent(m[1]); } catch (e) { sid = null; }
      setHash(sid && sid === state.sid ? VIEW : '');
      if (sid && sid === state.sid) return viewer.start();
      return showLauncher(NOT_YOURS, true);
    }
    if (h === VIEW && state.sid) return viewer.start();
    if (h) setHash('');
    showLauncher();
  }
  function go(hash) {
    if (location.hash === hash || (hash === '' && !location.hash)) route();
    else location.hash = hash;
  }

  // ------------------------------------------------------------------ launcher
  function setMsg(text, warn) {
    $('launcher-msg').textContent = text || '';
    $('launcher-msg').className = warn ? 'msg warn' : 'msg';
  }
  var busy = false;

  function showLauncher(msg, warn) {
    viewer.stop();
    $('viewer').hidden = true;
    $('launcher').hidden = false;
    if (msg !== undefined) setMsg(msg, warn);
    refreshResume();
    if (isKaiOS) $('url').focus();
  }

  function refreshResume() {
    $('resume').hidden = true;
    if (!state.sid) return;
    var sid = state.sid;
    request('GET', sessionPath(sid, 'info'), undefined, function (status, data) {
      if (sid !== state.sid) return;
      if (status === 200 && data && data.status === 'ready') {
        rememberPage(data.page_info);
        $('resume-title').textContent = state.title || 'the open page';
        $('resume').hidden = false;
      } else if (status === 404 || status === 409) {
        forget();
      }
    }, 10000);
  }

  function loadTiles() {
    request('GET', 'static/sites.json', undefined, function (status, data) {
      var box = $('tiles');
      box.innerHTML = '';
      if (status !== 200 || !data) return;
      if (typeof data.search === 'string' && data.search.indexOf('%s') > 0) {
        state.search = data.search;
      }
      each(data.sites || [], function (site) {
        if (!site || typeof site.url !== 'string' || !/^https?:\/\//i.test(site.url)) return;
        var name = String(site.name || site.url);
        var tile = document.createElement('button');
        tile.type = 'button';
        tile.className = 'tile nav';
        tile.setAttribute('data-url', site.url);
        tile.title = site.url;
        var badge = document.createElement('span');
        badge.className = 'badge';
        badge.textContent = name.charAt(0).toUpperCase();
        badge.style.background = typeof site.color === 'string' ? site.color : '#555';
        var label = document.createElement('span');
        label.className = 'name';
        label.textContent = name;
        tile.appendChild(badge);
        tile.appendChild(label);
        tile.onclick = function () { openUrl(site.url); };
        box.appendChild(tile);
      });
    }, 15000);
  }

  function normalizeUrl(text) {
    text = (text || '').replace(/^\s+|\s+$/g, '');
    if (!text) return '';
    if (/^[a-z][a-z0-9+.\-]*:\/\//i.test(text)) return text;
    if (/\s/.test(text) || text.indexOf('.') < 0 && !/^localhost(:|\/|$)/.test(text)) {
      return state.search.replace('%s', encodeURIComponent(text));
    }
    // A bare IP or localhost is most likely a plain-HTTP device on the LAN.
    var plain = /^(\d+\.\d+\.\d+\.\d+|localhost)(:\d+)?(\/|$)/.test(text);
    return (plain ? 'http://' : 'https://') + text;
  }

  function wantedViewport() {
    if (prefs.desktop) return {width: 1280, height: 720, deviceScaleFactor: 1, mobile: false};
    var w = window.innerWidth || document.documentElement.clientWidth || 240;
    var h = (window.innerHeight || document.documentElement.clientHeight || 320) - BAR_HEIGHT;
    var dsf = prefs.sharp ? clamp(window.devicePixelRatio || 1, 1, 2) : 1;
    w = clamp(Math.round(w), 200, 1920);
    h = clamp(Math.round(h), 200, 1080);
    return {width: w, height: h, deviceScaleFactor: dsf, mobile: w < 800};
  }
  function viewportKey(vp) {
    return [vp.width, vp.height, vp.deviceScaleFactor, vp.mobile ? 1 : 0].join('x');
  }

  function openUrl(url) {
    url = normalizeUrl(url);
    if (!url || busy) return;
    var vp = wantedViewport(), key = viewportKey(vp);
    busy = true;
    setMsg('Opening ' + url + ' \u2026');
    function done(msg) { busy = false; setMsg(msg); }
    function create() {
      var body = {url: url, width: vp.width, height: vp.height,
        deviceScaleFactor: vp.deviceScaleFactor, mobile: vp.mobile};
      request('POST', 'api/session/create', body, function (status, data) {
        if (status === 201 && data && data.session_id) {
          remember(data.session_id, key);
          rememberPage(data.page_info);
          done('');
          go(VIEW);
        } else {
          done('Could not open the page: ' + errorText(status, data));
        }
      }, 90000);
    }
    // One session per device: reuse it while its viewport still fits this screen.
    if (state.sid && state.vpKey === key) {
      request('POST', sessionPath(state.sid, 'load'), {url: url}, function (status, data) {
        if (status === 200) {
          rememberPage(data && data.page_info);
          done('');
          go(VIEW);
        } else if (status === 404 || status === 409 || status === 410) {
          forget();
          create();
        } else {
          done('Could not open the page: ' + errorText(status, data));
        }
      }, 90000);
    } else {
      if (state.sid) request('POST', sessionPath(state.sid, 'close'), {}, function () {});
      forget();
      create();
    }
  }

  function visible(el) {
    return !!(el.offsetWidth || el.offsetHeight) && !el.disabled;
  }
  function centre(el) {
    var r = el.getBoundingClientRect();
    return {x: r.left + r.width / 2, y: r.top + r.height / 2, top: r.top, bottom: r.bottom};
  }
  // D-pad focus movement for KaiOS-style keypads: nearest focusable item in that direction.
  function launcherKey(e) {
    var dir = ARROWS[e.key];
    if (!dir) return;
    var active = document.activeElement;
    if (active && active.tagName === 'INPUT' && active.type !== 'checkbox' && !dir[1]) return;
    var items = [];
    each(document.querySelectorAll('#launcher .nav'), function (el) {
      if (visible(el)) items.push(el);
    });
    if (!items.length) return;
    e.preventDefault();
    if (items.indexOf(active) < 0) { items[0].focus(); return; }
    var from = centre(active), best = null, bestScore = Infinity;
    each(items, function (el) {
      if (el === active) return;
      var c = centre(el), dx = c.x - from.x, dy = c.y - from.y;
      var along = dx * dir[0] + dy * dir[1];
      if (along <= 1) return;
      var score = along + 2 * Math.abs(dx * dir[1] + dy * dir[0]);
      if (score < bestScore) { best = el; bestScore = score; }
    });
    if (!best) return;
    best.focus();
    var c = centre(best);
    if (c.top < 0 || c.bottom > window.innerHeight) best.scrollIntoView(c.top < 0);
  }

  // ------------------------------------------------------------------ viewer
  var viewer = (function () {
    var canvas = $('screen'), ctx = canvas.getContext('2d');
    var socket = null, statsTimer = null, infoTimer = null, running = false, ended = false;
    var frameW = 0, frameH = 0, vpWidth = 0, pending = null, decoding = false;
    var inflight = [];  // send times of input events awaiting their acknowledgement
    var cursor = {x: 0, y: 0, placed: false};
    var last = {t: now(), frames: 0, bytes: 0};
    var t = {  // live figures, also read by the browser tests
      sid: null, frames: 0, drawn: 0, dropped: 0, bytes: 0, seq: 0, drawnSeq: 0,
      connected: false, subscribed: false, connects: 0, disconnects: 0,
      fps: 0, kbps: 0, rtt: null, quality: null, acks: 0, errors: [],
      delta: false, keyFrames: 0, updates: 0, keyRequests: 0
    };
    window.jiomosa = t;

    function banner(text) {
      var el = $('banner');
      el.textContent = text || '';
      el.hidden = !text;
    }

    function start() {
      stop();
      ended = false;
      running = true;
      t.sid = shared ? null : state.sid;
      t.share = null;
      $('launcher').hidden = true;
      $('viewer').hidden = false;
      $('ended').hidden = true;
      $('nav-url').value = shared ? '' : state.url || '';
      sharedMode();
      syncControls();
      banner('Connecting\u2026');
      layout();
      canvas.focus();
      if (typeof window.io !== 'function') {
        banner('The Socket.IO client did not load');
        return;
      }
      socket = window.io({
        path: BASE + 'socket.io',
        transports: ['websocket', 'polling'],
        tryAllTransports: true,
        // session_id lets the ingress send every client of a session to one streamer.
        query: shared ? {encoding: 'binary'} : {encoding: 'binary', session_id: state.sid},
        reconnectionDelay: 500,
        reconnectionDelayMax: 3000,
        timeout: 8000
      });
      socket.on('connect', function () {
        t.connected = true;
        t.connects++;
        banner(t.frames ? '' : 'Loading\u2026');
        subscribe();
      });
      socket.on('disconnect', function (reason) {
        t.connected = false;
        t.subscribed = false;
        t.disconnects++;
        inflight = [];
        if (ended || !running) return;
        banner('Connection lost, reconnecting\u2026');
        if (reason === 'io server disconnect') socket.connect();
      });
      socket.on('connect_error', function () {
        if (!ended) banner('Offline, retrying\u2026');
      });
      socket.on('subscribe:response', function (r) {
        t.quality = r.quality;
        if (shared && r.share) {
          shared.id = t.share = r.share.share_id;
          shared.input = r.share.input === true;
          sharedMode();
        }
      });
      socket.on('subscribed', function () {
        t.subscribed = true;
        banner('');
      });
      socket.on('frame', onFrame);
      socket.on('frame:delta', onDelta);
      socket.on('input:acknowledged', function () {
        var sent = inflight.shift();
        if (sent) t.rtt = now() - sent;
        t.acks++;
      });
      socket.on('quality:updated', function (d) { t.quality = d.quality; });
      socket.on('error', function (e) {
        e = e || {};
        t.errors.push(e);
        var event = String(e.event || '');
        if (event.indexOf('input:') === 0) inflight.shift();
        if (event === 'subscribe' && /not found|failed|not ready/i.test(e.message || '')) {
          sessionEnded(shared ? 'This share link no longer works: its owner stopped sharing ' +
            'or the session ended.' : 'This session has ended (' + e.message + ').');
        } else if (e.message) {
          flash(e.message);
        }
      });
      socket.on('session:closed', function (d) {
        if (d && d.reason === 'moved') {  // a fleet handed the session over: follow it
          t.subscribed = false;
          banner('Reconnecting\u2026');
          setTimeout(subscribe, 300);
          return;
        }
        if (shared && d && d.reason === 'share revoked') {
          sessionEnded('The owner stopped sharing this session.');
          return;
        }
        sessionEnded('Session closed: ' + ((d && d.reason) || 'ended') + '.');
      });
      statsTimer = setInterval(updateStats, 1000);
      refreshInfo();
      infoTimer = setInterval(refreshInfo, 5000);
    }

    function stop() {
      running = false;
      if (socket) {
        socket.off();
        socket.disconnect();
        socket = null;
      }
      clearInterval(statsTimer);
      clearInterval(infoTimer);
      t.connected = t.subscribed = false;
      inflight = [];
      pending = null;
      deltaQueue = [];
      banner('');
    }

    function subscribe() {
      if (!socket || !(shared || state.sid)) return;
      var payload = shared ? {share: shared.token} : {session_id: state.sid};
      if (prefs.quality !== 'auto') payload.quality = +prefs.quality;
      if (+prefs.fps !== 60) payload.fps = +prefs.fps;
      if (DELTA) {  // only what changed, after a key frame (docs/protocol.md, Delta frames)
        payload.delta = true;
        payload.formats = WEBP ? ['jpeg', 'png', 'webp'] : ['jpeg', 'png'];
      }
      deltaQueue = [];
      heldSeq = 0;
      waitingKey = true;
      t.delta = DELTA;
      socket.emit('subscribe', payload);
    }

    function sessionEnded(message) {
      ended = true;
      if (!shared) forget();  // a share link's end is not the end of this device's session
      $('restart').hidden = !!shared;
      if (socket) { socket.off(); socket.disconnect(); socket = null; }
      banner('');
      $('ended-msg').textContent = message;
      $('ended').hidden = false;
      $('restart').focus();
    }

    var flashTimer = null;
    function flash(text) {
      banner(text);
      clearTimeout(flashTimer);
      flashTimer = setTimeout(function () { if (t.subscribed) banner(''); }, 2500);
    }

    function refreshInfo() {
      var sid = state.sid, view = shared;
      if (ended || !(view || sid)) return;
      function got(status, data) {
        if (status !== 200 || !data || view !== shared || (!view && sid !== state.sid)) return;
        if (data.viewport && data.viewport.width) vpWidth = data.viewport.width;
        var page = data.page_info || {};
        if (view) { $('nav-url').value = page.title || page.url || ''; return; }
        rememberPage(page);
        if (document.activeElement !== $('nav-url')) $('nav-url').value = state.url;
      }
      if (view) request('GET', 'api/share/info', undefined, got, 10000, view.token);
      else request('GET', sessionPath(sid, 'info'), undefined, got, 10000);
    }

    // A share link's view: marked as such; without the owner's grant, nothing is sent.
    function sharedMode() {
      var bar = $('shared-bar'), input = !!(shared && shared.input);
      bar.hidden = !shared;
      bar.textContent = !shared ? '' : input ? 'Viewing a shared session \u2014 you can control it'
        : 'Viewing a shared session \u2014 read only';
      $('nav-url').readOnly = !!shared;
      $('kbd-btn').hidden = !!shared && !input;
      if (shared && !input) $('kbd').hidden = true;
      $('owner-tools').hidden = !!shared;
      $('share-box').hidden = true;
      layout();
    }

    // -------------------------------------------------------------- frames
    function onFrame(f) {
      if (!f || f.session_id !== (shared ? shared.id : state.sid) || !f.image) return;
      if (f.key) { onKeyFrame(f); return; }
      var img = f.image;
      t.frames++;
      t.bytes += typeof img === 'string' ? img.length : (img.byteLength || img.size || 0);
      t.seq = f.seq;
      if (pending) t.dropped++;
      pending = f;  // latest frame wins here too: a slow decoder skips, never queues
      if (!decoding) decodeNext();
    }

    function decodeNext() {
      var f = pending;
      if (!f) return;
      pending = null;
      decoding = true;
      function finish() { decoding = false; decodeNext(); }
      function drawn(source) {
        try { draw(f, source); } finally { finish(); }
      }
      if (typeof f.image === 'string') {  // base64 data URL (compatibility encoding)
        var im = new Image();
        im.onload = function () { drawn(im); };
        im.onerror = finish;
        im.src = f.image;
        return;
      }
      var blob = new Blob([f.image], {type: 'image/jpeg'});
      if (window.createImageBitmap) {
        window.createImageBitmap(blob).then(function (bitmap) {
          drawn(bitmap);
          if (bitmap.close) bitmap.close();
        }, finish);
        return;
      }
      var url = URL.createObjectURL(blob), im2 = new Image();
      im2.onload = function () { URL.revokeObjectURL(url); drawn(im2); };
      im2.onerror = function () { URL.revokeObjectURL(url); finish(); };
      im2.src = url;
    }

    // -------------------------------------------------------------- delta frames
    // A key frame, then updates: copies of moved regions (taken from a snapshot of the
    // picture before the update, so that overlapping copies are safe) and rectangles of
    // images. Updates apply in order, each to the picture of its base_seq; one that does not
    // fit asks for a key frame and everything until it comes is dropped.
    var DELTA = !!(window.createImageBitmap && window.Promise && window.Blob);
    var WEBP = (function () {
      try {
        var c = document.createElement('canvas');
        c.width = c.height = 1;
        return c.toDataURL('image/webp').indexOf('data:image/webp') === 0;
      } catch (e) { return false; }
    })();
    var MIME = {jpeg: 'image/jpeg', png: 'image/png', webp: 'image/webp'};
    var deltaQueue = [], deltaBusy = false, heldSeq = 0, waitingKey = true, snapshot = null;

    function onKeyFrame(f) {
      t.frames++;
      t.bytes += f.image.byteLength || 0;
      t.seq = f.seq;
      deltaQueue = [{key: f}];  // a key frame makes everything before it moot
      runDelta();
    }

    function onDelta(d) {
      if (!d || d.session_id !== (shared ? shared.id : state.sid)) return;
      t.frames++;
      for (var i = 0; i < (d.images || []).length; i++) {
        t.bytes += (d.images[i].data && d.images[i].data.byteLength) || 0;
      }
      t.seq = d.seq;
      if (waitingKey) { t.dropped++; return; }
      deltaQueue.push({delta: d});
      runDelta();
    }

    function needKey() {
      deltaQueue = [];
      if (waitingKey) return;
      waitingKey = true;
      t.keyRequests++;
      if (socket) socket.emit('frame:key');
    }

    function runDelta() {
      if (deltaBusy || !deltaQueue.length) return;
      var item = deltaQueue.shift();
      deltaBusy = true;
      function done() { deltaBusy = false; runDelta(); }
      if (item.key) {
        var f = item.key;
        window.createImageBitmap(new Blob([f.image], {type: 'image/jpeg'})).then(function (bm) {
          try {
            draw(f, bm);
            heldSeq = f.seq;
            waitingKey = false;
            t.keyFrames++;
          } finally {
            if (bm.close) bm.close();
            done();
          }
        }, function () { needKey(); done(); });
        return;
      }
      var d = item.delta;
      if (waitingKey) { done(); return; }
      if (d.base_seq !== heldSeq || d.width !== frameW || d.height !== frameH) {
        needKey();
        done();
        return;
      }
      var images = d.images || [];
      Promise.all(images.map(function (im) {
        return window.createImageBitmap(new Blob([im.data], {type: MIME[im.format]}));
      })).then(function (bitmaps) {
        try {
          if (applyDelta(d, bitmaps)) {
            heldSeq = d.seq;
            t.updates++;
            t.drawn++;
            t.drawnSeq = d.seq;
          } else {
            needKey();
          }
        } finally {
          each(bitmaps, function (bm) { if (bm.close) bm.close(); });
          done();
        }
      }, function () { needKey(); done(); });
    }

    function inside(x, y, w, h, W, H) {
      return x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= W && y + h <= H;
    }

    // Checks every rectangle before drawing anything: a bad update changes nothing.
    function applyDelta(d, bitmaps) {
      var copies = d.copies || [], i, j;
      for (i = 0; i < copies.length; i++) {
        var c = copies[i];
        if (!inside(c[0], c[1], c[2], c[3], frameW, frameH) ||
            !inside(c[0] + c[4], c[1] + c[5], c[2], c[3], frameW, frameH)) return false;
      }
      for (i = 0; i < bitmaps.length; i++) {
        for (j = 0; j < d.images[i].rects.length; j++) {
          var r = d.images[i].rects[j];
          if (!inside(r[0], r[1], r[2], r[3], frameW, frameH) ||
              !inside(r[4], r[5], r[2], r[3], bitmaps[i].width, bitmaps[i].height)) return false;
        }
      }
      if (copies.length) {
        snapshot = snapshot || document.createElement('canvas');
        if (snapshot.width !== frameW || snapshot.height !== frameH) {
          snapshot.width = frameW;
          snapshot.height = frameH;
        }
        snapshot.getContext('2d').drawImage(canvas, 0, 0);
        for (i = 0; i < copies.length; i++) {
          c = copies[i];
          ctx.drawImage(snapshot, c[0], c[1], c[2], c[3], c[0] + c[4], c[1] + c[5], c[2], c[3]);
        }
      }
      for (i = 0; i < bitmaps.length; i++) {
        for (j = 0; j < d.images[i].rects.length; j++) {
          r = d.images[i].rects[j];
          ctx.drawImage(bitmaps[i], r[4], r[5], r[2], r[3], r[0], r[1], r[2], r[3]);
        }
      }
      return true;
    }

    function draw(f, source) {
      var w = f.width || source.width, h = f.height || source.height;
      if (w !== frameW || h !== frameH) {
        frameW = canvas.width = w;
        frameH = canvas.height = h;
        if (!cursor.placed) { cursor.x = Math.round(w / 2); cursor.y = Math.round(h / 2); }
        layout();
      }
      ctx.drawImage(source, 0, 0, w, h);
      t.drawn++;
      t.drawnSeq = f.seq;
      if (!t.subscribed) return;
      if ($('banner').textContent === 'Loading\u2026') banner('');
    }

    function layout() {
      var stage = $('stage'), sw = stage.clientWidth, sh = stage.clientHeight;
      if (!frameW || !sw || !sh) return;
      var scale = Math.min(sw / frameW, sh / frameH);
      var w = Math.max(1, Math.floor(frameW * scale)), h = Math.max(1, Math.floor(frameH * scale));
      canvas.style.width = w + 'px';
      canvas.style.height = h + 'px';
      canvas.style.left = Math.floor((sw - w) / 2) + 'px';
      canvas.style.top = '0px';
      placeCursor();
    }

    function updateStats() {
      var at = now(), dt = Math.max(0.001, (at - last.t) / 1000);
      t.fps = Math.round((t.frames - last.frames) / dt * 10) / 10;
      t.kbps = Math.round((t.bytes - last.bytes) * 8 / 1000 / dt);
      last = {t: at, frames: t.frames, bytes: t.bytes};
      var el = $('stats');
      if (!prefs.stats) { el.textContent = ''; return; }
      el.textContent = t.fps + ' fps ' + t.kbps + ' kbit/s\n' +
        (t.rtt === null ? 'rtt -' : 'rtt ' + t.rtt + ' ms') +
        (t.quality ? ' q' + t.quality : '');
    }

    // -------------------------------------------------------------- input
    function send(event, data) {
      if (!socket || !t.subscribed || (shared && !shared.input)) return false;
      inflight.push(now());
      if (inflight.length > 64) inflight.shift();
      socket.emit(event, data);
      return true;
    }

    function toFrame(clientX, clientY) {
      var r = canvas.getBoundingClientRect();
      if (!frameW || !r.width || !r.height) return null;
      var x = (clientX - r.left) * frameW / r.width, y = (clientY - r.top) * frameH / r.height;
      if (x < 0 || y < 0 || x > frameW || y > frameH) return null;
      return {x: clamp(Math.round(x), 0, frameW - 1), y: clamp(Math.round(y), 0, frameH - 1)};
    }
    function remotePerLocal() {  // remote CSS pixels per displayed CSS pixel
      var r = canvas.getBoundingClientRect();
      return r.width ? (vpWidth || frameW) / r.width : 1;
    }

    var scroll = {dx: 0, dy: 0, at: null, timer: null};
    function queueScroll(dx, dy, at) {
      scroll.dx += dx;
      scroll.dy += dy;
      scroll.at = at;
      if (!scroll.timer) scroll.timer = setTimeout(flushScroll, 50);  // <= 20 events a second
    }
    function flushScroll() {
      clearTimeout(scroll.timer);
      scroll.timer = null;
      var dx = Math.round(scroll.dx), dy = Math.round(scroll.dy), at = scroll.at;
      scroll.dx = scroll.dy = 0;
      if (!dx && !dy) return;
      var payload = {deltaX: clamp(dx, -10000, 10000), deltaY: clamp(dy, -10000, 10000)};
      if (at) { payload.x = at.x; payload.y = at.y; }
      send('input:scroll', payload);
    }

    var gesture = null;
    function down(x, y) {
      gesture = {x0: x, y0: y, sx: x, sy: y, t0: now(), drag: false, at: toFrame(x, y)};
    }
    function move(x, y) {
      var g = gesture;
      if (!g) return;
      if (!g.drag && Math.abs(x - g.x0) + Math.abs(y - g.y0) > 10) g.drag = true;
      if (!g.drag) return;
      var k = remotePerLocal();
      queueScroll((g.sx - x) * k, (g.sy - y) * k, g.at);  // swipe up = scroll down
      g.sx = x;
      g.sy = y;
    }
    function up() {
      var g = gesture;
      gesture = null;
      if (!g) return;
      if (g.drag) flushScroll();
      else if (g.at && now() - g.t0 < 1500) send('input:click', g.at);
      canvas.focus();
    }

    if (window.PointerEvent) {
      canvas.addEventListener('pointerdown', function (e) {
        if (e.button > 0) return;
        e.preventDefault();
        if (canvas.setPointerCapture) {
          try { canvas.setPointerCapture(e.pointerId); } catch (err) { /* not capturable */ }
        }
        down(e.clientX, e.clientY);
      });
      canvas.addEventListener('pointermove', function (e) {
        if (gesture) { e.preventDefault(); move(e.clientX, e.clientY); }
      });
      canvas.addEventListener('pointerup', function (e) { e.preventDefault(); up(); });
      canvas.addEventListener('pointercancel', function () { gesture = null; flushScroll(); });
    } else {
      var lastTouch = 0;
      canvas.addEventListener('touchstart', function (e) {
        var p = e.changedTouches[0];
        e.preventDefault();
        lastTouch = now();
        down(p.clientX, p.clientY);
      }, false);
      canvas.addEventListener('touchmove', function (e) {
        var p = e.changedTouches[0];
        e.preventDefault();
        move(p.clientX, p.clientY);
      }, false);
      canvas.addEventListener('touchend', function (e) { e.preventDefault(); up(); }, false);
      canvas.addEventListener('mousedown', function (e) {
        if (now() - lastTouch < 800 || e.button > 0) return;
        e.preventDefault();
        down(e.clientX, e.clientY);
      });
      window.addEventListener('mousemove', function (e) { if (gesture) move(e.clientX, e.clientY); });
      window.addEventListener('mouseup', function () { if (gesture) up(); });
    }
    canvas.addEventListener('wheel', function (e) {
      e.preventDefault();
      var unit = e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? (frameH || 600) : 1;
      queueScroll(e.deltaX * unit, e.deltaY * unit, toFrame(e.clientX, e.clientY));
    });
    canvas.addEventListener('contextmenu', function (e) { e.preventDefault(); });

    // D-pad cursor (KaiOS and other keypad devices): arrows move it, the centre key clicks,
    // pushing it past an edge scrolls the page.
    function placeCursor() {
      var el = $('cursor');
      el.hidden = !prefs.cursor || !frameW || !!(shared && !shared.input);
      if (el.hidden) return;
      var k = parseFloat(canvas.style.width) / frameW;
      el.style.left = (parseFloat(canvas.style.left) + cursor.x * k) + 'px';
      el.style.top = (parseFloat(canvas.style.top) + cursor.y * k) + 'px';
    }
    function cursorKey(e) {
      var dir = ARROWS[e.key];
      if (shared && !shared.input) return false;
      if (dir && frameW) {
        var step = Math.max(6, Math.round(frameW / 20)) * (e.repeat ? 2 : 1);
        var nx = cursor.x + dir[0] * step, ny = cursor.y + dir[1] * step;
        if (nx < 0 || ny < 0 || nx >= frameW || ny >= frameH) {
          var k = (vpWidth || frameW) / frameW;
          send('input:scroll', {deltaX: dir[0] * Math.round(frameW * k / 3),
            deltaY: dir[1] * Math.round(frameH * k / 3), x: cursor.x, y: cursor.y});
        }
        cursor.x = clamp(nx, 0, frameW - 1);
        cursor.y = clamp(ny, 0, frameH - 1);
        cursor.placed = true;
        placeCursor();
        return true;
      }
      if (e.key === 'Enter' && frameW) {
        send('input:click', {x: cursor.x, y: cursor.y});
        return true;
      }
      return false;
    }

    function onKey(e) {
      var target = e.target || {}, tag = target.tagName;
      if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA' || tag === 'BUTTON') {
        if (e.key === 'Escape' && target.blur) { target.blur(); canvas.focus(); }
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      var key = e.key === 'Spacebar' ? ' ' : e.key;
      if (key === 'SoftLeft') { e.preventDefault(); toggle('menu'); return; }
      if (key === 'SoftRight') { e.preventDefault(); go(''); return; }
      if (prefs.cursor && cursorKey(e)) { e.preventDefault(); return; }
      if (KEYS[key] || (key && key.length === 1)) {
        e.preventDefault();
        send('input:key', {key: key});
      }
    }

    function setQuality(value) {
      savePref('quality', value);
      if (!socket) return;
      if (value === 'auto') socket.emit('adaptive:toggle', {enabled: true});
      else socket.emit('quality:set', {quality: +value});
    }
    function setFps(value) {
      savePref('fps', value);
      if (!socket) return;
      socket.emit('fps:set', {fps: +value});
      // fps:set turns adaptive quality off; "Auto" quality means it stays on.
      if (prefs.quality === 'auto') socket.emit('adaptive:toggle', {enabled: true});
    }
    function syncControls() {
      $('quality').value = prefs.quality;
      $('fps').value = prefs.fps;
      $('opt-stats').checked = prefs.stats;
      $('opt-cursor').checked = prefs.cursor;
      placeCursor();
    }

    function pause(paused) {  // page hidden (app in background): stop the stream, keep the session
      if (!socket || !socket.connected || ended) return;
      if (paused) { socket.emit('unsubscribe', {}); t.subscribed = false; }
      else subscribe();
    }

    return {start: start, stop: stop, layout: layout, onKey: onKey, send: send,
      setQuality: setQuality, setFps: setFps, syncControls: syncControls, pause: pause,
      running: function () { return running; }};
  })();

  function toggle(id) {
    var el = $(id);
    el.hidden = !el.hidden;
    viewer.layout();
    return !el.hidden;
  }

  // ------------------------------------------------------------------ wiring
  $('go-form').onsubmit = function (e) {
    e.preventDefault();
    openUrl($('url').value);
  };
  $('resume-btn').onclick = function () { if (state.sid) go(VIEW); };
  $('opt-desktop').checked = prefs.desktop;
  $('opt-sharp').checked = prefs.sharp;
  $('opt-desktop').onchange = function () { savePref('desktop', this.checked); };
  $('opt-sharp').onchange = function () { savePref('sharp', this.checked); };

  $('home').onclick = function () { go(''); };
  $('nav-form').onsubmit = function (e) {
    e.preventDefault();
    var url = normalizeUrl($('nav-url').value), sid = state.sid;
    if (!url || !sid || shared) return;
    $('nav-url').blur();
    request('POST', sessionPath(sid, 'load'), {url: url}, function (status, data) {
      if (status === 200) rememberPage(data && data.page_info);
      else $('banner').textContent = 'Could not open the page: ' + errorText(status, data);
      $('banner').hidden = status === 200;
    }, 90000);
  };
  $('kbd-btn').onclick = function () { if (toggle('kbd')) $('kbd-input').focus(); };
  $('kbd').onsubmit = function (e) {
    e.preventDefault();
    var text = $('kbd-input').value;
    if (text) viewer.send('input:text', {text: text.slice(0, 4000)});
    $('kbd-input').value = '';
  };
  $('kbd-enter').onclick = function () { viewer.send('input:key', {key: 'Enter'}); };
  $('kbd-back').onclick = function () { viewer.send('input:key', {key: 'Backspace'}); };
  $('menu-btn').onclick = function () { toggle('menu'); };
  $('quality').onchange = function () { viewer.setQuality(this.value); };
  $('fps').onchange = function () { viewer.setFps(this.value); };
  $('opt-stats').onchange = function () { savePref('stats', this.checked); };
  $('opt-cursor').onchange = function () {
    savePref('cursor', this.checked);
    viewer.syncControls();
  };
  $('close-session').onclick = function () {
    var sid = state.sid;
    forget();
    if (sid) request('POST', sessionPath(sid, 'close'), {}, function () {});
    go('');
  };
  $('restart').onclick = function () { go(''); openUrl(state.url); };

  // Sharing: a link with its own token lets someone watch this session without its id;
  // read-only unless "Let them control" is ticked. Stop revokes it (its viewers are cut off).
  $('share-btn').onclick = function () {
    var sid = state.sid;
    if (!sid || shared) return;
    if (myShare && myShare.sid === sid) {
      $('share-box').hidden = false;
      viewer.layout();
      return;
    }
    request('POST', sessionPath(sid, 'share'), {input: $('share-input').checked},
      function (status, data) {
        if (status !== 201 || !data || !data.share_token) {
          $('banner').textContent = 'Could not share: ' + errorText(status, data);
          $('banner').hidden = false;
          return;
        }
        myShare = {sid: sid, token: data.share_token};
        $('share-url').value = location.href.split('#')[0] + '#share=' + data.share_token;
        $('share-box').hidden = false;
        viewer.layout();
        $('share-url').focus();
        $('share-url').select();
      }, 15000);
  };
  $('share-copy').onclick = function () {
    var text = $('share-url').value;
    $('share-url').select();
    try { document.execCommand('copy'); } catch (e) { /* selected: the user can copy it */ }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(null, function () {});
    }
  };
  $('share-stop').onclick = function () {
    var s = myShare;
    myShare = null;
    $('share-box').hidden = true;
    $('share-url').value = '';
    viewer.layout();
    if (s) {
      request('DELETE', sessionPath(s.sid, 'share/' + encodeURIComponent(s.token)), undefined,
        function () {});
    }
  };
  $('ended-home').onclick = function () { go(''); };

  document.addEventListener('keydown', function (e) {
    if ($('viewer').hidden) launcherKey(e);
    else viewer.onKey(e);
  });
  window.addEventListener('resize', function () { viewer.layout(); });
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', function () {
    if (viewer.running()) viewer.pause(document.hidden);
  });

  loadTiles();
  route();
})();
