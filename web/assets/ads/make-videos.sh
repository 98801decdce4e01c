#!/usr/bin/env bash
# Regenerates the demo ad clips of the adtrack catalogue: 6-second 480x270
# H.264 (yuv420p, faststart) videos with a quiet tone, one per demo ad.
#
#   apt-get install -y ffmpeg fonts-dejavu-core
#   bash web/assets/ads/make-videos.sh
set -euo pipefail

cd "$(dirname "$0")"

FONT_BOLD=${FONT_BOLD:-/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf}
FONT=${FONT:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
for f in "$FONT_BOLD" "$FONT"; do
  [[ -r $f ]] || { echo "font $f not found (apt-get install -y fonts-dejavu-core)" >&2; exit 1; }
done

DURATION=6
SIZE=480x270

# name|headline|tagline|background|accent|tone (Hz)
ADS=(
  "aurora|AURORA|Sparkling water, lit from within|0x0b3d5c|0x5ee6c8|523"
  "summit|SUMMIT|Trail shoes for the long way up|0x3b2a1a|0xf2a541|392"
  "nimbus|NIMBUS|Cloud storage that scales with you|0x27225e|0x9ab8ff|440"
  "harbor|HARBOR|Coffee roasted by the sea|0x1f3b2d|0xe8c07a|349"
)

for spec in "${ADS[@]}"; do
  IFS='|' read -r name headline tagline bg accent tone <<<"$spec"
  # Headline fades in, tagline follows, an accent bar fills along the top
  # as the clip plays, and a small "Ad" label sits in the corner.
  vf="[0:v][1:v]overlay=x='-w+w*t/${DURATION}':y=0:shortest=1"
  vf+=",drawbox=x=40:y=92:w=60:h=6:color=${accent}:t=fill"
  vf+=",drawtext=fontfile=${FONT_BOLD}:text='${headline}':fontcolor=white:fontsize=58:x=40:y=108:alpha='min(1,t/0.8)'"
  vf+=",drawtext=fontfile=${FONT}:text='${tagline}':fontcolor=${accent}:fontsize=20:x=42:y=180:alpha='max(0,min(1,(t-0.8)/0.8))'"
  vf+=",drawtext=fontfile=${FONT_BOLD}:text='AD':fontcolor=white@0.85:fontsize=14:box=1:boxcolor=black@0.35:boxborderw=6:x=w-tw-18:y=16"
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "color=c=${bg}:s=${SIZE}:r=25:d=${DURATION}" \
    -f lavfi -i "color=c=${accent}:s=480x10:r=25:d=${DURATION}" \
    -f lavfi -i "sine=frequency=${tone}:sample_rate=44100:duration=${DURATION}" \
    -filter_complex "${vf}[v];[2:a]volume=0.06,afade=t=in:d=0.5,afade=t=out:st=$((DURATION - 1)):d=1[a]" \
    -map "[v]" -map "[a]" \
    -c:v libx264 -profile:v main -preset slow -crf 26 -pix_fmt yuv420p \
    -c:a aac -b:a 48k -ac 1 \
    -movflags +faststart -shortest \
    "${name}.mp4"
  echo "${name}.mp4 $(stat -c %s "${name}.mp4") bytes"
done
