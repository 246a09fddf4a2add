// Microphone -> 20 ms frames of 16-bit PCM, posted to the page. The AudioContext runs at
// 16 kHz, so the browser has already resampled the microphone for us.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(320);
    this.fill = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    let peak = 0;
    for (let i = 0; i < channel.length; i++) {
      const s = Math.max(-1, Math.min(1, channel[i]));
      peak = Math.max(peak, Math.abs(s));
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.frame.length) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(320);
        this.fill = 0;
      }
    }
    return true;
  }
}
registerProcessor("capture-processor", CaptureProcessor);
