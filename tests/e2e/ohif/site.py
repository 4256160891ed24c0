"""OHIF's published build served from loopback, configured for one DICOMweb store.

Two pieces a browser needs besides the static files:

- ``app-config.js`` is generated per request (:func:`app_config`): one DICOMweb data source
  whose QIDO-RS, WADO-RS and WADO-URI roots are the store's base URL, server-side
  thumbnails (``/thumbnail?viewport=256,256`` with ``Accept: image/jpeg``, PS3.18 §9.5.1.3),
  and a short script that adds the viewer's bearer token to the page's own requests to that
  root. OHIF 3.13's DICOMweb data source ignores ``requestOptions.auth``, and its ``?token=``
  parameter works on the viewer page only, not on the study list.
- Links such as ``/viewer?StudyInstanceUIDs=...`` name no file: OHIF routes them in the
  browser, so any path without a file and without an extension is answered with
  ``index.html`` (what the build's own ``serve.json`` rewrite does). A missing asset is still a
  404, so a broken build shows up as one.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

DICOMWEB_NAMESPACE = "@ohif/extension-default.dataSourcesModule.dicomweb"
SOURCE_NAME = "dicomweb"

# Runs before OHIF's bundles: every XMLHttpRequest and fetch to the store's root gets the
# bearer token unless the caller set an Authorization header itself. ROOT and TOKEN are
# JSON string literals filled in by app_config().
_AUTH_SCRIPT = """\
(function () {
  var root = ROOT;
  var authorization = 'Bearer ' + TOKEN;
  function toStore(url) {
    try {
      var u = new URL(String(url), window.location.href);
      var bare = u.origin + u.pathname;
      return bare === root || bare.indexOf(root + '/') === 0;
    } catch (error) {
      return false;
    }
  }
  var open = XMLHttpRequest.prototype.open;
  var setRequestHeader = XMLHttpRequest.prototype.setRequestHeader;
  var send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.dicomwebToStore = toStore(url);
    this.dicomwebAuthorized = false;
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.setRequestHeader = function (name) {
    if (String(name).toLowerCase() === 'authorization') {
      this.dicomwebAuthorized = true;
    }
    return setRequestHeader.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.dicomwebToStore && !this.dicomwebAuthorized) {
      setRequestHeader.call(this, 'Authorization', authorization);
    }
    return send.apply(this, arguments);
  };
  var nativeFetch = window.fetch;
  window.fetch = function (input, init) {
    var url = input instanceof Request ? input.url : input;
    if (!toStore(url)) {
      return nativeFetch.apply(window, arguments);
    }
    var headers = new Headers(
      (init && init.headers) || (input instanceof Request ? input.headers : undefined)
    );
    if (!headers.has('Authorization')) {
      headers.set('Authorization', authorization);
    }
    return nativeFetch.call(window, input, Object.assign({}, init, { headers: headers }));
  };
})();
"""


def data_source(base_url: str) -> dict[str, Any]:
    """OHIF's DICOMweb data source configuration for a store at ``base_url``.

    ``thumbnailRendering: 'thumbnail'`` with ``thumbnailRequestStrategy: 'fetch'`` makes OHIF
    ask the store for ``.../thumbnail?viewport=256,256`` (and show the series as thumbnails in
    the study list's preview as well as the viewer's study browser) instead of decoding a frame
    in the browser. QIDO-RS matching follows docs/conformance.md: wildcards, fuzzy matching
    of person names and ``includefield`` are supported.
    """
    root = base_url.rstrip("/")
    return {
        "friendlyName": "dicomweb-serverless",
        "name": "dicomweb-serverless",
        "qidoRoot": root,
        "wadoRoot": root,
        "wadoUriRoot": root,
        "qidoSupportsIncludeField": True,
        "supportsWildcard": True,
        "supportsFuzzyMatching": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "thumbnail",
        "thumbnailRequestStrategy": "fetch",
        "enableStudyLazyLoad": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }


def app_config(base_url: str, token: str | None) -> str:
    """The text of ``app-config.js``: the auth script (when there is a token), then ``window.config``."""
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": SOURCE_NAME,
        "dataSources": [
            {
                "namespace": DICOMWEB_NAMESPACE,
                "sourceName": SOURCE_NAME,
                "configuration": data_source(base_url),
            }
        ],
    }
    parts = ["/* Generated by tests/e2e/ohif/site.py for the store at " + base_url + " */"]
    if token is not None:
        root = json.dumps(base_url.rstrip("/"))
        parts.append(_AUTH_SCRIPT.replace("ROOT", root, 1).replace("TOKEN", json.dumps(token), 1))
    parts.append("window.config = " + json.dumps(config, indent=2) + ";\n")
    return "\n".join(parts)


class _Handler(SimpleHTTPRequestHandler):
    """Static files from ``directory``, ``app-config.js`` from ``config``, SPA routes to index.html."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming requires it
        ".woff2": "font/woff2",
        ".svg": "image/svg+xml",
    }

    def __init__(self, *args: Any, config: Callable[[], str], directory: str, **kwargs: Any) -> None:
        self._config = config
        super().__init__(*args, directory=directory, **kwargs)

    def send_head(self) -> Any:
        path = unquote(urlsplit(self.path).path)
        if path == "/app-config.js":
            body = self._config().encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return io.BytesIO(body)
        if not Path(self.translate_path(self.path)).exists() and "." not in PurePosixPath(path).name:
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the browser's own log tells which requests failed


class OhifSite:
    """OHIF's ``dist/`` served on ``host:port`` (port 0: a free one) in a background thread."""

    def __init__(self, dist: Path, config: Callable[[], str], *, host: str = "127.0.0.1", port: int = 0):
        self._host = host
        handler = partial(_Handler, config=config, directory=str(dist))
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-site", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> OhifSite:
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server thread ends (Ctrl-C interrupts)."""
        while self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
