# Shared by scripts/run and scripts/standin (sourced, not run).
PYTHON=.venv/bin/python

# setting NAME DEFAULT: the value of a setting as the service reads it: the environment first,
# then .env (with the same parser as the service: export prefixes, quotes, comments), else DEFAULT.
setting() {
  local name=$1 default=$2 value
  value=$(printenv "$name" || true)
  if [ -z "$value" ] && [ -f .env ]; then
    value=$("$PYTHON" -c 'import sys; from dotenv import dotenv_values; print(dotenv_values(".env").get(sys.argv[1]) or "")' "$name")
  fi
  printf '%s' "${value:-$default}"
}

# standin_port: STANDIN_PORT as a checked port number (exits with a message when it is not one).
standin_port() {
  local port
  port=$(setting STANDIN_PORT 8188)
  if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "STANDIN_PORT=$port is not a port number (1-65535)" >&2
    exit 2
  fi
  printf '%s' "$port"
}

# port_in_use PORT: true when something already accepts connections on 127.0.0.1:PORT.
port_in_use() {
  "$PYTHON" -c 'import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# refuse_busy_port PORT: stop with a clear message when PORT is taken (it may be a real ComfyUI).
refuse_busy_port() {
  if port_in_use "$1"; then
    cat >&2 <<MSG
cannot start the stand-in ComfyUI: port $1 on 127.0.0.1 is already in use (by a real ComfyUI,
an earlier stand-in, or something else). Stop that process, choose another port with
STANDIN_PORT=<port> (environment or .env), or point the service at a ComfyUI with COMFYUI_URL.
MSG
    exit 1
  fi
}
