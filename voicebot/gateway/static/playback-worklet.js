// The bot's voice: a queue of 16-bit PCM chunks played in order. "clear" empties the queue
// at once (barge-in), so at most one render quantum (8 ms) already handed out is heard.
// Frames arrive paced at real time, so network jitter would click: each talk-spurt starts
// only once 60 ms are queued, and that cushion absorbs late frames.
const PRIME_SAMPLES = 960;
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.played = 0;
    this.lastReport = 0;
    this.primed = false;
    this.sinceArrival = 0;  // samples rendered since the last chunk came in
    this.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "audio") {
        this.queue.push(new Int16Array(msg.buffer));
        this.sinceArrival = 0;
      }
      else if (msg.type === "clear") { this.queue = []; this.offset = 0; this.primed = false; }
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    if (!this.primed) {
      const queued = this.queue.reduce((n, c) => n + c.length, 0) - this.offset;
      // A short last piece of a reply would wait forever: play it once nothing more comes.
      this.primed = queued >= PRIME_SAMPLES || (queued > 0 && this.sinceArrival >= 640);
    }
    this.sinceArrival += out.length;
    while (this.primed && i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const n = Math.min(out.length - i, chunk.length - this.offset);
      for (let k = 0; k < n; k++) out[i + k] = chunk[this.offset + k] / 0x8000;
      i += n;
      this.offset += n;
      this.played += n;
      if (this.offset >= chunk.length) { this.queue.shift(); this.offset = 0; }
    }
    if (!this.queue.length) this.primed = false;  // underrun: re-prime the next spurt
    for (; i < out.length; i++) out[i] = 0;
    if (this.played - this.lastReport >= 1600) {
      this.lastReport = this.played;
      this.port.postMessage({ type: "played", samples: this.played });
    }
    return true;
  }
}
registerProcessor("playback-processor", PlaybackProcessor);
