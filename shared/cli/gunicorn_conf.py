"""gunicorn's configuration of the API, written once: `facelib up` and the tests
(`up.api_command`) and the image (Dockerfile, docker-compose.yml) all run
`gunicorn --config python:shared.cli.gunicorn_conf`, naming on the command line only what
differs between them: the address (`--bind`) and the number of workers and threads.
"""

wsgi_app = "api:create_app()"
worker_class = "gthread"
workers = 2
threads = 8
graceful_timeout = 30
timeout = 120
