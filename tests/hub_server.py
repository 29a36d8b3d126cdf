"""A local stand-in for the Hugging Face hub and a release-file host, for tests.

Serves HEAD and GET on /<owner>/<repo>/resolve/<rev>/<file> with the headers
`huggingface_hub` reads (ETag = the sha256, as the hub's LFS files have it,
X-Repo-Commit, Content-Length), and plain GET (with Range) on /releases/<file>.
Every request is counted; `corrupt` / `truncate` hold file names to damage.
"""
import hashlib
import http.server
import threading

COMMIT = 'a' * 40


class HubServer:

    def __init__(self):
        self.files = {}              # path -> bytes
        self.requests, self.ranges = [], []
        self.corrupt, self.truncate = set(), set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self, send_body):
                server.requests.append((self.command, self.path))
                path = self.path
                if '/resolve/' in path:      # /owner/repo/resolve/rev/file -> owner/repo/file
                    repo, rest = path.lstrip('/').split('/resolve/', 1)
                    path = f'{repo}/{rest.split("/", 1)[1]}'
                data = server.files.get(path.lstrip('/'))
                if data is None:
                    self.send_response(404)
                    self.send_header('X-Error-Code', 'EntryNotFound')
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                start = 0
                if self.headers.get('Range'):
                    server.ranges.append(self.headers['Range'])
                    start = int(self.headers['Range'].split('=')[1].split('-')[0])
                body = data[start:]
                name = path.rsplit('/', 1)[-1]
                if name in server.corrupt:
                    body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
                self.send_response(206 if start else 200)
                self.send_header('ETag', f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header('X-Repo-Commit', COMMIT)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body[:len(body) // 2] if name in server.truncate else body)

            def do_HEAD(self):
                self._head(False)

            def do_GET(self):
                self._head(True)

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
