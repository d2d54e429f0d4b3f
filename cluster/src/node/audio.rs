//! What a node hears and says: the G.711 codecs it generates and mixes in, the IVR prompt and
//! hold tones, and the meeting mix's arithmetic. Sample arithmetic only: which sessions are
//! in a room, and the RTP that carries a frame, are the core's (`core.rs`).

use std::sync::LazyLock;

use pbxlab_proto::g711;

/// Samples in a 20 ms frame at 8 kHz, and so RTP timestamp units per frame.
pub(super) const SAMPLES: usize = 160;

/// The audio codecs the node can generate and mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub(super) fn from_pt(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub(super) fn pt(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub(super) fn encode(self, pcm: &[i16], out: &mut [u8]) {
        match self {
            Codec::Pcmu => g711::encode_ulaw(pcm, out),
            Codec::Pcma => g711::encode_alaw(pcm, out),
        }
    }

    pub(super) fn decode(self, codes: &[u8], out: &mut [i16]) {
        match self {
            Codec::Pcmu => g711::decode_ulaw(codes, out),
            Codec::Pcma => g711::decode_alaw(codes, out),
        }
    }
}

/// A repeating tone pattern, encoded once in both codecs so a frame costs a copy.
pub(super) struct Tone {
    ulaw: Vec<u8>,
    alaw: Vec<u8>,
}

impl Tone {
    /// Segments of (milliseconds, frequency in Hz; 0 is silence). Every length should be a
    /// multiple of 20 ms so frames do not straddle segments (they may; it only clicks).
    fn new(segments: &[(u32, f64)]) -> Tone {
        let mut pcm = Vec::new();
        for &(ms, hz) in segments {
            let n = ms as usize * 8;
            pcm.extend((0..n).map(|i| {
                let phase = i as f64 * hz * std::f64::consts::TAU / 8000.0;
                // About -12 dBFS: clearly audible, far from clipping.
                (phase.sin() * 8000.0) as i16
            }));
        }
        // Whole frames only, at least one.
        pcm.resize(pcm.len().div_ceil(SAMPLES).max(1) * SAMPLES, 0);
        let mut ulaw = vec![0u8; pcm.len()];
        let mut alaw = vec![0u8; pcm.len()];
        g711::encode_ulaw(&pcm, &mut ulaw);
        g711::encode_alaw(&pcm, &mut alaw);
        Tone { ulaw, alaw }
    }

    /// Frame `i` of the endless repetition.
    pub(super) fn frame(&self, codec: Codec, i: u64) -> &[u8] {
        let codes = match codec {
            Codec::Pcmu => &self.ulaw,
            Codec::Pcma => &self.alaw,
        };
        let frames = (codes.len() / SAMPLES).max(1) as u64;
        let at = (i % frames) as usize * SAMPLES;
        codes.get(at..at + SAMPLES).unwrap_or(&[])
    }
}

/// The IVR menu prompt: 400 ms of 440 Hz, 600 ms of silence.
pub(super) static PROMPT: LazyLock<Tone> = LazyLock::new(|| Tone::new(&[(400, 440.0), (600, 0.0)]));
/// Hold audio: two notes (G4, B4) and a second of silence.
pub(super) static HOLD: LazyLock<Tone> =
    LazyLock::new(|| Tone::new(&[(500, 392.0), (500, 493.9), (1000, 0.0)]));

/// The sum of a room's latest frames: what a participant hears is the sum less its own frame,
/// so a room of n costs n additions and n subtractions a sample rather than n².
pub(super) struct Mix {
    // i64: a room can hold every session of the node, and 65,536 full-scale frames overflow i32.
    sum: [i64; SAMPLES],
}

impl Mix {
    pub(super) fn new() -> Mix {
        Mix { sum: [0; SAMPLES] }
    }

    pub(super) fn add(&mut self, pcm: &[i16; SAMPLES]) {
        for (s, &x) in self.sum.iter_mut().zip(pcm.iter()) {
            *s += i64::from(x);
        }
    }

    /// Encodes into `payload` what a participant hears: everyone else. `own` is the frame it
    /// sent since the last tick, `None` if it sent none (and so was not in the sum).
    pub(super) fn encode_without(
        &self,
        own: Option<&[i16; SAMPLES]>,
        codec: Codec,
        payload: &mut [u8; SAMPLES],
    ) {
        let own = own.unwrap_or(&[0; SAMPLES]);
        let mut mixed = [0i16; SAMPLES];
        for ((o, &s), &x) in mixed.iter_mut().zip(&self.sum).zip(own) {
            // Clamped to the i16 range, so the cast is exact.
            *o = (s - i64::from(x)).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
        }
        codec.encode(&mixed, payload);
    }
}
