#!/usr/bin/env bash
# Android demo: install the toolchain once per machine under $MEMWALL_ANDROID_HOME (default /opt/memwall/android),
# then build what can be built without the Android Gradle Plugin: the pure Kotlin/JVM core (+ its JUnit tests) and a
# signed debug APK of the app module's own code. Returns in seconds when nothing changed.
#
# Where each piece comes from (FACTS.md "Native runtime and mobile toolchains"; no registry host is written here,
# every mirror is read from this machine's own apt/npm configuration):
#   android.jar (API 23)      Debian bullseye android-sdk-platform-23 / libandroid-23-java (temporary APT_CONFIG)
#   dx                        Debian bullseye dalvik-exchange (no d8/r8 is packaged anywhere reachable)
#   aapt2, zipalign, apksigner, junit4   Debian bookworm (this machine's release)
#   kotlinc 2.4.20            npm kotlin-compiler (a full modern compiler; Debian's kotlin is 1.3)
#   runtime API jars          npm react-native-executorch@0.9.3 (ExecuTorch Android classes.jar: TrainingModule,
#                             SGD) and com.github.asus4.onnxruntime@0.4.9 (ORT 1.29 Android classes) -- compile
#                             time only: their .so files need bionic + fbjni, so they are not in the APK.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOOLS=${MEMWALL_ANDROID_HOME:-/opt/memwall/android}
OUT=${MEMWALL_ANDROID_BUILD:-$HERE/build}
TOOLCHAIN_VERSION=3   # bump when the list below changes

log() { echo "android_demo/setup.sh: $*" >&2; }

# The Debian archive this machine already uses (deb822 .sources or one-line .list), for the bullseye packages.
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ {print $2}' "$f" | grep -v security | grep -i debian | head -n1 || true)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "$f" \
      | grep -v security | grep -i debian | head -n1 || true)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  log "no Debian archive found in /etc/apt/sources.list*; add one (the bullseye Android packages come from it)"
  exit 1
}

install_bullseye() {
  local apt=$TOOLS/apt mirror
  mirror=$(debian_mirror)
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" >"$apt/sources.list"
  cat >"$apt/apt.conf" <<CONF
Dir::Etc::SourceList "$apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt/cache";
Dir::Cache::Archives "$apt/archives";
APT::Architecture "amd64";
CONF
  : >"$apt/status"
  mkdir -p "$apt/cache"
  APT_CONFIG=$apt/apt.conf apt-get update -qq || {
    log "cannot read bullseye from $mirror (oldoldstable may have moved to the Debian archive): point a line of /etc/apt/sources.list* at a mirror that still carries it"
    exit 1
  }
  (cd "$apt/debs" && APT_CONFIG=$apt/apt.conf apt-get download -qq android-sdk-platform-23 libandroid-23-java dalvik-exchange)
  rm -rf "$TOOLS/bullseye"
  mkdir -p "$TOOLS/bullseye"
  for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$TOOLS/bullseye"; done
}

npm_unpack() {  # npm_unpack PACKAGE@VERSION DEST: the registry tarball, no install scripts, no dependencies
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$1" >/dev/null)
  rm -rf "$2"
  mkdir -p "$2"
  tar -xzf "$tmp"/*.tgz -C "$2" --strip-components=1
  rm -rf "$tmp"
}

install_toolchain() {
  log "installing the Android toolchain into $TOOLS (once per machine)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    local need=()
    for p in aapt zipalign apksigner junit4 libhamcrest-java; do
      dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
  fi
  for t in aapt2 zipalign apksigner; do
    command -v "$t" >/dev/null || { log "$t missing: apt-get install aapt zipalign apksigner (needs root)"; exit 1; }
  done
  mkdir -p "$TOOLS"
  install_bullseye
  npm_unpack kotlin-compiler@2.4.20 "$TOOLS/kotlinc"
  local rne=$TOOLS/npm/react-native-executorch ort=$TOOLS/npm/onnxruntime
  npm_unpack react-native-executorch@0.9.3 "$rne"
  npm_unpack com.github.asus4.onnxruntime@0.4.9 "$ort"
  mkdir -p "$TOOLS/runtime-jars"
  cp "$(find "$rne" -name classes.jar -path '*executorch*' | head -n1)" "$TOOLS/runtime-jars/executorch-android.jar"
  local ortjar
  ortjar=$(find "$ort" \( -name 'classes.jar' -o -name 'onnxruntime*.jar' \) | head -n1)
  if [ -z "$ortjar" ]; then  # the Android archive itself: classes.jar inside the .aar
    local aar
    aar=$(find "$ort" -name '*.aar' | head -n1)
    unzip -o -q "$aar" classes.jar -d "$TOOLS/runtime-jars/ort-aar"
    ortjar=$TOOLS/runtime-jars/ort-aar/classes.jar
  fi
  cp "$ortjar" "$TOOLS/runtime-jars/onnxruntime-android.jar"
  rm -rf "$TOOLS/npm"   # only the two jars are needed; the .so files cannot run here
  echo "$TOOLCHAIN_VERSION" >"$TOOLS/.toolchain-version"
}

if [ "$(cat "$TOOLS/.toolchain-version" 2>/dev/null)" != "$TOOLCHAIN_VERSION" ]; then
  install_toolchain
fi
log "toolchain ready in $TOOLS"

# ---- build: each stage reruns only when its inputs (sources, jars it compiles against, this script) changed ----
REPO=$(cd "$HERE/.." && pwd)
KOTLINC=$TOOLS/kotlinc/bin/kotlinc
STDLIB=$TOOLS/kotlinc/lib/kotlin-stdlib.jar
ANDROID_JAR=$TOOLS/bullseye/usr/lib/android-sdk/platforms/android-23/android.jar
DX_JAR=$TOOLS/bullseye/usr/lib/android-sdk/build-tools/debian/lib/dx.jar
JUNIT=/usr/share/java/junit4.jar:/usr/share/java/hamcrest.jar
RUNTIME_JARS=$TOOLS/runtime-jars/executorch-android.jar:$TOOLS/runtime-jars/onnxruntime-android.jar
# The app's Gradle build targets minSdk 26 too: dx needs it for kotlin-stdlib 2.x (invokedynamic, default methods).
MIN_SDK=26
TARGET_SDK=34
export JAVA_OPTS="${JAVA_OPTS:--Xmx1g}"
mkdir -p "$OUT"

digest() { find "$@" -type f -not -path "$OUT/*" -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64; }

# stale NAME INPUTS...: true when the stage must run; `fresh NAME` records its inputs after it succeeded. The
# compiler flags and toolchain version count as inputs; the rest of this script does not (edits to it would
# otherwise recompile everything: about a minute per kotlinc run on a busy 2-core machine).
KOTLIN_FLAGS="-Werror -jvm-target 1.8 -no-reflect"
stale() {
  local name=$1
  shift
  STAMP_NEW=$( (digest "$@"; echo "$KOTLIN_FLAGS $TOOLCHAIN_VERSION $MIN_SDK $TARGET_SDK") | sha256sum | cut -c1-64)
  [ "$(cat "$OUT/$name.stamp" 2>/dev/null)" != "$STAMP_NEW" ]
}
fresh() { echo "$STAMP_NEW" >"$OUT/$1.stamp"; }


CORE_SRC=$HERE/core/src/main/kotlin
TEST_SRC=$HERE/core/src/test/kotlin
if stale core "$CORE_SRC"; then
  log "compiling core"
  "$KOTLINC" $KOTLIN_FLAGS -d "$OUT/core.jar" "$CORE_SRC"
  fresh core
fi
if stale core-tests "$TEST_SRC" "$OUT/core.jar"; then
  log "compiling core tests"
  "$KOTLINC" $KOTLIN_FLAGS -cp "$OUT/core.jar:$JUNIT" -d "$OUT/core-tests.jar" "$TEST_SRC"
  fresh core-tests
fi
# JUnit: rerun when the code or the golden vectors changed (tests/golden is written by python -m sdk_tools.conformance).
if stale junit "$OUT/core.jar" "$OUT/core-tests.jar" "$REPO/tests/golden"; then
  log "running core JUnit tests"
  classes=$(cd "$TEST_SRC" && find . -name '*Test.kt' | sed 's#^\./##; s#\.kt$##; s#/#.#g' | sort)
  # shellcheck disable=SC2086
  java -cp "$OUT/core.jar:$OUT/core-tests.jar:$STDLIB:$JUNIT" -Dmemwall.golden="$REPO/tests/golden" \
    org.junit.runner.JUnitCore $classes | tee "$OUT/junit.log" | tail -n 5
  fresh junit
fi

APP=$HERE/app/src/main
if stale apk "$APP" "$OUT/core.jar"; then
  log "compiling the app module against android.jar (API 23) and the runtimes' Java APIs"
  rm -rf "$OUT/apk" && mkdir -p "$OUT/apk"
  "$KOTLINC" $KOTLIN_FLAGS -no-jdk \
    -cp "$ANDROID_JAR:$OUT/core.jar:$RUNTIME_JARS" -d "$OUT/apk/app-classes.jar" "$APP/kotlin"
  log "dexing app + core + kotlin-stdlib (the runtime jars are compile-time only: see README)"
  # dx cannot read Java 9+ class files: drop kotlin-stdlib's module-info (META-INF/versions/9), unused on Android.
  cp "$STDLIB" "$OUT/apk/kotlin-stdlib.jar"
  zip -q -d "$OUT/apk/kotlin-stdlib.jar" 'META-INF/versions/*'
  java $JAVA_OPTS -jar "$DX_JAR" --dex --min-sdk-version=$MIN_SDK --output="$OUT/apk/classes.dex" \
    "$OUT/apk/app-classes.jar" "$OUT/core.jar" "$OUT/apk/kotlin-stdlib.jar"
  aapt2 compile --dir "$APP/res" -o "$OUT/apk/res.zip"
  # Gradle puts the namespace into the merged manifest; this build does the same for aapt2.
  sed 's#<manifest #<manifest package="dev.memwall.demo" #' "$APP/AndroidManifest.xml" >"$OUT/apk/AndroidManifest.xml"
  aapt2 link -o "$OUT/apk/unsigned.apk" -I "$ANDROID_JAR" --manifest "$OUT/apk/AndroidManifest.xml" \
    --min-sdk-version $MIN_SDK --target-sdk-version $TARGET_SDK --version-code 1 --version-name 0.1.0 \
    "$OUT/apk/res.zip"
  (cd "$OUT/apk" && zip -q -X unsigned.apk classes.dex)
  zipalign -f 4 "$OUT/apk/unsigned.apk" "$OUT/apk/aligned.apk"
  KEYSTORE=$TOOLS/debug.keystore
  if [ ! -f "$KEYSTORE" ]; then
    keytool -genkeypair -keystore "$KEYSTORE" -storepass android -keypass android -alias androiddebugkey \
      -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=Android Debug,O=Android,C=US" >/dev/null 2>&1
  fi
  apksigner sign --ks "$KEYSTORE" --ks-pass pass:android --key-pass pass:android \
    --out "$OUT/memwall-demo-debug.apk" "$OUT/apk/aligned.apk"
  apksigner verify "$OUT/memwall-demo-debug.apk"
  aapt2 dump badging "$OUT/memwall-demo-debug.apk" | head -n 1
  fresh apk
fi
log "built: $OUT/core.jar, $OUT/memwall-demo-debug.apk"
