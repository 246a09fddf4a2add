// The voicebot web page: a call from the browser, over the WebSocket leg (binary 16 kHz
// PCM both ways, JSON events from the server) or WebRTC where the server offers it.
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const ui = { state: $("state"), vad: $("vad"), chat: $("chat"), status: $("status"),
             start: $("start"), stop: $("stop"), transport: $("transport") };
let call = null;

function setState(state) {
  ui.state.textContent = state.replaceAll("_", " ").toLowerCase();
  ui.state.className = `state ${state}`;
  ui.state.dataset.state = state;
}

function say(kind, text) {
  const div = document.createElement("div");
  div.className = `msg ${kind}`;
  div.textContent = text;
  ui.chat.append(div);
  div.scrollIntoView({ block: "end" });
}

function onEvent(event) {
  switch (event.type) {
    case "state": setState(event.state); break;
    case "vad": ui.vad.style.width = `${Math.round(event.probability * 100)}%`; break;
    case "transcript": if (event.final && event.text) say("caller", event.text); break;
    case "bot_text": say("bot", event.text); break;
    case "interrupted": say("note", `interrupted (${Math.round(event.latency_ms)} ms)`); break;
    case "error": say("note", `error: ${event.message}`); break;
    case "call_ended": say("note", `call ended: ${event.reason}`); break;
  }
}

async function openAudio() {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
             channelCount: 1 },
  });
  const ctx = new AudioContext({ sampleRate: 16000 });
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  await ctx.audioWorklet.addModule("/static/playback-worklet.js");
  const capture = new AudioWorkletNode(ctx, "capture-processor");
  const playback = new AudioWorkletNode(ctx, "playback-processor");
  ctx.createMediaStreamSource(media).connect(capture);
  playback.connect(ctx.destination);
  playback.port.onmessage = (e) => {
    if (e.data.type === "played") document.body.dataset.playedSamples = e.data.samples;
  };
  await ctx.resume();
  return { media, ctx, capture, playback };
}

async function startWebSocket() {
  const audio = await openAudio();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "start", sample_rate: 16000 }));
    audio.capture.port.onmessage = (e) => { if (ws.readyState === 1) ws.send(e.data); };
    ui.status.textContent = "Connected: talk to the bot.";
    document.body.dataset.connected = "ws";
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") {
      audio.playback.port.postMessage({ type: "audio", buffer: e.data }, [e.data]);
      return;
    }
    const msg = JSON.parse(e.data);
    if (msg.type === "clear") audio.playback.port.postMessage({ type: "clear" });
    else onEvent(msg);
  };
  ws.onclose = (e) => { finish(`Disconnected (${e.code}${e.reason ? `: ${e.reason}` : ""}).`); };
  ws.onerror = () => { ui.status.textContent = "Connection error."; };
  return { close: () => { if (ws.readyState <= 1) ws.send(JSON.stringify({ type: "stop" })); },
           audio };
}

function waitForIceGathering(pc) {
  // Non-trickle: the server answers once, so the offer must carry every candidate.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

async function startWebRtc() {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
             channelCount: 1 },
  });
  const pc = new RTCPeerConnection();
  media.getTracks().forEach((track) => pc.addTrack(track, media));
  const events = pc.createDataChannel("events");
  events.onmessage = (e) => onEvent(JSON.parse(e.data));
  const player = new Audio();
  player.autoplay = true;
  pc.ontrack = (e) => { player.srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") {
      ui.status.textContent = "Connected: talk to the bot.";
      document.body.dataset.connected = "webrtc";
    } else if (["failed", "closed", "disconnected"].includes(pc.connectionState)) {
      finish(`Disconnected (${pc.connectionState}).`);
    }
  };
  // How much bot audio has actually been played out (for people and for tests).
  const stats = setInterval(async () => {
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && s.totalAudioEnergy !== undefined) {
        document.body.dataset.playedEnergy = s.totalAudioEnergy.toFixed(4);
      }
    });
  }, 500);
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch("/webrtc/offer", {
    method: "POST", headers,
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    pc.close();
    media.getTracks().forEach((t) => t.stop());
    clearInterval(stats);
    throw new Error(body.error || `HTTP ${response.status}`);
  }
  await pc.setRemoteDescription(await response.json());
  const ctx = { close: () => {} };
  return {
    close: () => { clearInterval(stats); pc.close(); finish("Call ended."); },
    audio: { media, ctx },
  };
}

function finish(message) {
  if (call) {
    call.audio.media.getTracks().forEach((t) => t.stop());
    call.audio.ctx.close();
    call = null;
  }
  ui.start.disabled = false;
  ui.stop.disabled = true;
  setState("IDLE");
  ui.state.textContent = "not connected";
  ui.status.textContent = message;
  delete document.body.dataset.connected;
}

ui.start.onclick = async () => {
  ui.start.disabled = true;
  ui.status.textContent = "Connecting…";
  try {
    const starter = window.voicebotTransports[ui.transport.value];
    call = await starter();
    ui.stop.disabled = false;
  } catch (err) {
    finish(`Could not start: ${err.message || err}`);
  }
};
ui.stop.onclick = () => { if (call) call.close(); };

window.voicebotTransports = { ws: startWebSocket, webrtc: startWebRtc };
window.voicebot = { onEvent, openAudio, finish, say, setState };
