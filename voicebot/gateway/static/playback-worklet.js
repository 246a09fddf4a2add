// The bot's voice: a queue of 16-bit PCM chunks played in order. "clear" empties the queue
// at once (barge-in), so at most one render quantum (8 ms) already handed out is heard.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.played = 0;
    this.lastReport = 0;
    this.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "audio") this.queue.push(new Int16Array(msg.buffer));
      else if (msg.type === "clear") { this.queue = []; this.offset = 0; }
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const n = Math.min(out.length - i, chunk.length - this.offset);
      for (let k = 0; k < n; k++) out[i + k] = chunk[this.offset + k] / 0x8000;
      i += n;
      this.offset += n;
      this.played += n;
      if (this.offset >= chunk.length) { this.queue.shift(); this.offset = 0; }
    }
    for (; i < out.length; i++) out[i] = 0;
    if (this.played - this.lastReport >= 1600) {
      this.lastReport = this.played;
      this.port.postMessage({ type: "played", samples: this.played });
    }
    return true;
  }
}
registerProcessor("playback-processor", PlaybackProcessor);
