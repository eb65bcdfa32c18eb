#!/usr/bin/env bash
# Back-end services for the tests, on loopback only.
#   scripts/services.sh up     make sure PostgreSQL, Redis and RabbitMQ answer (start them if
#                              they are down), start moto (AWS) and the GCP Pub/Sub emulator,
#                              install the tansu Kafka broker (once, cached outside the clone;
#                              the Kafka tests start their own brokers from it) and schemathesis
#                              (same cache),
#                              and write their endpoints to $OUTRIDER_SERVICES_DIR/env
#   scripts/services.sh down   stop what `up` started (by pid), nothing else
set -euo pipefail
DIR="${OUTRIDER_SERVICES_DIR:-/tmp/outrider-services}"
mkdir -p "$DIR"
STARTED="$DIR/started"   # lines: name pid-or-command
ENVF="$DIR/env"

log() { echo "services: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # name port seconds
  local i; for ((i = 0; i < $3 * 10; i++)); do port_open "$2" && return 0; sleep 0.1; done
  log "$1 did not open port $2 within $3 s (log: $DIR/$1.log)"; return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ensure() { # name port start-command...
  local name=$1 port=$2; shift 2
  if port_open "$port"; then return 0; fi
  log "$name is down on $port: starting it"
  "$@" >"$DIR/$name.log" 2>&1 || true
  wait_port "$name" "$port" 60
  echo "$name system" >>"$STARTED"
}

# PostgreSQL's TLS for the sslmode tests: a CA and a certificate for
# localhost/127.0.0.1 signed by it, made once per machine with openssl;
# PostgreSQL reloads them without a restart. Connections that do not ask for
# TLS are unchanged.
PG_TLS_DIR=/var/lib/postgresql/outrider-test-tls
pg_tls() {
  local d="$PG_TLS_DIR" req=(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650)
  if ! [ -s "$d/server.key" ] || ! [ -s "$d/ca.pem" ]; then
    mkdir -p "$d"
    "${req[@]}" -subj /CN=outrider-test-pg-ca -keyout "$d/ca.key" -out "$d/ca.pem" >"$DIR/pg-tls.log" 2>&1
    "${req[@]}" -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -addext "basicConstraints=critical,CA:FALSE" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
      -keyout "$d/server.key" -out "$d/server.pem" >>"$DIR/pg-tls.log" 2>&1
    chown -R postgres:postgres "$d" && chmod 600 "$d/server.key" "$d/ca.key"
  fi
  # A role that must log in with SCRAM over TLS, for the channel-binding test.
  local hba
  hba="/etc/postgresql/$(ls /etc/postgresql | head -n1)/main/pg_hba.conf"
  grep -q outrider_scram "$hba" || sed -i '1i hostssl all outrider_scram 127.0.0.1/32 scram-sha-256' "$hba"
  psql -h 127.0.0.1 -U postgres -qAt -c "ALTER SYSTEM SET ssl_cert_file = '$d/server.pem'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$d/server.key'" -c "ALTER SYSTEM SET ssl = on" \
    -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outrider_scram') THEN
          CREATE ROLE outrider_scram LOGIN PASSWORD 'scram-pw'; END IF; END \$\$" \
    -c "SELECT pg_reload_conf()" >/dev/null
}

up() {
  : >"$STARTED"
  ensure postgresql 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  pg_tls || { log "cannot set up PostgreSQL's test TLS certificate (log: $DIR/pg-tls.log)"; return 1; }
  ensure redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  ensure rabbitmq 5672 rabbitmq-server -detached
  mkdir -p "$DIR/nats-js"
  ensure nats 4222 start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd "$DIR/nats-js"
  ensure mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf

  # A Kafka-protocol broker from crates.io, built once per machine (~15 min cold).
  # The Kafka tests keep users and topics in a SQLite file (the libsql feature).
  local tools="${OUTRIDER_TOOLS_DIR:-$HOME/.cache/outrider/tools}" tansu_build="0.6.0 dynostore,libsql"
  if [ "$(cat "$tools/tansu.build" 2>/dev/null)" != "$tansu_build" ] || ! [ -x "$tools/bin/tansu" ]; then
    log "installing tansu $tansu_build (Kafka-compatible broker) into $tools"
    cargo install tansu --version "${tansu_build% *}" --locked --features "${tansu_build#* }" --root "$tools" --force \
      >"$DIR/tansu-install.log" 2>&1 || { log "tansu install failed (log: $DIR/tansu-install.log)"; return 1; }
    echo "$tansu_build" >"$tools/tansu.build"
  fi

  # Schemathesis (PyPI), for the OpenAPI fuzzing test, in its own virtualenv.
  local st_version="4.32.5" st_venv="$tools/schemathesis-venv"
  if [ "$(cat "$st_venv/outrider.version" 2>/dev/null)" != "$st_version" ] || ! [ -x "$st_venv/bin/st" ]; then
    log "installing schemathesis $st_version into $st_venv"
    { python3 -m venv "$st_venv" && "$st_venv/bin/pip" install -q "schemathesis==$st_version"; } \
      >"$DIR/schemathesis-install.log" 2>&1 || { log "schemathesis install failed (log: $DIR/schemathesis-install.log)"; return 1; }
    echo "$st_version" >"$st_venv/outrider.version"
  fi

  local moto_port pubsub_port
  moto_port=$(free_port)
  command -v moto_server >/dev/null || { log "moto_server is not installed (pip install 'moto[server]')"; return 1; }
  setsid moto_server -H 127.0.0.1 -p "$moto_port" >"$DIR/moto.log" 2>&1 &
  echo "moto $!" >>"$STARTED"
  pubsub_port=$(free_port)
  command -v gcloud >/dev/null || { log "gcloud (with the pubsub-emulator component) is not installed"; return 1; }
  setsid gcloud beta emulators pubsub start --host-port="127.0.0.1:$pubsub_port" --project=outrider-test \
    >"$DIR/pubsub.log" 2>&1 &
  echo "pubsub $!" >>"$STARTED"
  wait_port moto "$moto_port" 30
  wait_port pubsub "$pubsub_port" 90
  cat >"$ENVF" <<ENV
OUTRIDER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
OUTRIDER_TEST_POSTGRES_CA=$PG_TLS_DIR/ca.pem
OUTRIDER_TEST_REDIS_URL=redis://127.0.0.1:6379
OUTRIDER_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672
OUTRIDER_TEST_NATS_ADDR=127.0.0.1:4222
OUTRIDER_TEST_MQTT_ADDR=127.0.0.1:1883
OUTRIDER_TEST_AWS_ENDPOINT=http://127.0.0.1:$moto_port
PUBSUB_EMULATOR_HOST=127.0.0.1:$pubsub_port
OUTRIDER_TEST_TANSU_BIN=$tools/bin/tansu
OUTRIDER_SCHEMATHESIS=$st_venv/bin/st
ENV
  log "up: postgresql 5432, redis 6379, rabbitmq 5672, nats 4222, mosquitto 1883, moto $moto_port, pubsub $pubsub_port"
}

# Test artifacts only: names the test suite generates (unique per run). Every
# step tolerates failure, so cleaning can never change a test result.
clean_test_artifacts() {
  if command -v rabbitmqctl >/dev/null && port_open 5672; then
    timeout 60 rabbitmqctl -q list_queues name 2>/dev/null \
      | grep -E '^outrider-(test|e2e|publish-e2e|opevents-e2e|loadtest)-' \
      | while read -r q; do timeout 20 rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done
  fi
  if command -v psql >/dev/null && port_open 5432; then
    for db in test; do
      timeout 30 psql -h 127.0.0.1 -U postgres -d "$db" -Atc \
        "select nspname from pg_namespace where nspname ~ '^outrider_(t|e2e)_'" 2>/dev/null \
        | while read -r sch; do timeout 20 psql -h 127.0.0.1 -U postgres -d "$db" -qc "drop schema \"$sch\" cascade" </dev/null >/dev/null 2>&1 || true; done
    done
  fi
  if command -v redis-cli >/dev/null && port_open 6379; then
    # Test deployments: t<hex>, e2e<n>, q<n>, r<n>, s<n>, lt<hex> (harness) prefixes before ":outrider:".
    timeout 30 redis-cli --scan --pattern '*outrider*' 2>/dev/null \
      | grep -E '^\{?(t[0-9a-f]{12}|e2e[0-9]+|q[0-9]+|r[0-9]+|s[0-9]+|lt[0-9a-f]+):outrider(:|\}:)' \
      | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
  fi
}

down() {
  clean_test_artifacts || true
  [ -f "$STARTED" ] || return 0
  while read -r name pid; do
    case "$pid" in
      system)
        case "$name" in
          postgresql) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main stop || true ;;
          redis) redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true ;;
          rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || true ;;
          nats) pkill -f "nats-server -a 127.0.0.1 -p 4222" 2>/dev/null || true ;;
          mosquitto) pkill -x mosquitto 2>/dev/null || true ;;
        esac ;;
      *) kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true ;;
    esac
  done <"$STARTED"
  rm -f "$STARTED" "$ENVF"
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
