//! The VAST 4 InLine document of one catalogue ad for one view.
//!
//! Shape (VAST 4.2 schema order; the schema is a sequence, so the order of
//! siblings matters): `VAST` (namespace `http://www.iab.com/VAST`) › `Ad` ›
//! `InLine` › `AdSystem`, `Error`, `Impression`, `AdServingId` (the view
//! id), `AdTitle`, `Creatives` › `Creative` › `Linear` › `TrackingEvents`,
//! `Duration`, `MediaFiles`, `VideoClicks` › `ClickThrough`; then the
//! creative's `UniversalAdId`. URLs keep the raw `[MACRO]` brackets players
//! substitute.

use super::macros::{ERROR_QUERY, QUERY};
use super::xml::Xml;
use super::TRACKED;
pub use crate::store::VideoAd;

/// What one document is made of besides the ad.
pub struct Document<'a> {
    /// `scheme://host[:port][/path]` without a trailing slash.
    pub base: &'a str,
    /// The view token embedded in every URL.
    pub token: &'a str,
    /// The view id, shown as `AdServingId`.
    pub view_id: uuid::Uuid,
}

/// `HH:MM:SS.mmm`, the VAST `Duration`.
fn duration(ms: i32) -> String {
    let ms = ms.max(0);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn query(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, m)| format!("{k}={m}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The document as XML text.
pub fn render(ad: &VideoAd, d: &Document<'_>) -> String {
    let base = d.base;
    let token = d.token;
    let common = query(&QUERY);
    let pixel = |event: &str| format!("{base}/t/{token}/{event}?{common}");
    let error = format!("{base}/t/{token}/error?{}&{common}", query(&ERROR_QUERY));
    let click = format!("{base}/c/{token}?ph=[ADPLAYHEAD]&cb=[CACHEBUSTING]");
    let media = if ad.video_url.starts_with('/') {
        format!("{base}{}", ad.video_url)
    } else {
        ad.video_url.clone()
    };
    let view = d.view_id.to_string();
    let width = ad.width.to_string();
    let height = ad.height.to_string();

    let mut x = Xml::new();
    x.open(
        "VAST",
        &[("version", "4.2"), ("xmlns", "http://www.iab.com/VAST")],
    )
    .open("Ad", &[("id", &ad.id), ("adType", "video")])
    .open("InLine", &[])
    .leaf(
        "AdSystem",
        &[("version", env!("CARGO_PKG_VERSION"))],
        "adtrack",
    )
    .leaf("Error", &[], &error)
    .leaf("Impression", &[("id", "adtrack")], &pixel("impression"))
    .leaf("AdServingId", &[], &view)
    .leaf("AdTitle", &[], &ad.title)
    .open("Creatives", &[])
    .open("Creative", &[("id", &ad.id), ("adId", &ad.id)])
    .open("Linear", &[])
    .open("TrackingEvents", &[]);
    for event in TRACKED {
        x.leaf("Tracking", &[("event", event)], &pixel(event));
    }
    x.close()
        .leaf("Duration", &[], &duration(ad.duration_ms))
        .open("MediaFiles", &[])
        .leaf(
            "MediaFile",
            &[
                ("id", &ad.id),
                ("delivery", "progressive"),
                ("type", &ad.mime_type),
                ("width", &width),
                ("height", &height),
            ],
            &media,
        )
        .close()
        .open("VideoClicks", &[])
        .leaf("ClickThrough", &[("id", "adtrack")], &click)
        .close()
        .close() // Linear
        .leaf("UniversalAdId", &[("idRegistry", "adtrack")], &ad.id);
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_vast_times() {
        assert_eq!(duration(6000), "00:00:06.000");
        assert_eq!(duration(3_723_004), "01:02:03.004");
    }

    #[test]
    fn the_document_escapes_catalogue_text_and_keeps_raw_macros() {
        let ad = VideoAd {
            id: "a1".into(),
            title: "Fish & <Chips>".into(),
            video_url: "/v.mp4".into(),
            target_url: "https://example.com/?a=1&b=2".into(),
            duration_ms: 6000,
            width: 480,
            height: 270,
            mime_type: "video/mp4".into(),
        };
        let xml = render(
            &ad,
            &Document {
                base: "https://t.example",
                token: "TOKEN",
                view_id: uuid::Uuid::nil(),
            },
        );
        assert!(
            xml.contains("<AdTitle>Fish &amp; &lt;Chips&gt;</AdTitle>"),
            "{xml}"
        );
        assert!(
            xml.contains("https://t.example/t/TOKEN/error?code=[ERRORCODE]&amp;"),
            "{xml}"
        );
        assert!(
            xml.contains(">https://t.example/v.mp4</MediaFile>"),
            "{xml}"
        );
        assert!(
            !xml.contains("example.com/?a=1"),
            "the target stays out: {xml}"
        );
    }
}
