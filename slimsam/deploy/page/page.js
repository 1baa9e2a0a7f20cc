// The page of `slimsam web` (slimsam/deploy/web.py): segment a photo in the browser with an exported model.
// transformers.js runs the export on onnxruntime-web (WebAssembly): the photo is encoded once, and each prompt
// change is decoded here, on this page. The server only serves files, and every file comes from it.
import { env, AutoProcessor, SamModel, RawImage, Tensor } from '/transformers/transformers.min.js';

env.allowRemoteModels = false;    // never the Hugging Face Hub
env.allowLocalModels = true;      // (off by default in browsers)
env.localModelPath = '/models/';  // model id 'export' -> /models/export/config.json, /models/export/onnx/...
env.useBrowserCache = false;      // an export re-written under the same address must not come from a cache
// onnxruntime-web's WebAssembly runtime from this server too: by default transformers.js takes it from a CDN.
env.backends.onnx.wasm.wasmPaths = {
    mjs: '/ort/ort-wasm-simd-threaded.asyncify.mjs',
    wasm: '/ort/ort-wasm-simd-threaded.asyncify.wasm',
};
env.backends.onnx.wasm.proxy = true;  // run onnxruntime in a worker: the page stays responsive while it encodes
const params = new URLSearchParams(location.search);  // ?dtype=fp32|q8|fp16, ?threads=N (default: ORT's choice)
if (params.has('threads')) env.backends.onnx.wasm.numThreads = Number(params.get('threads'));

const MODEL_ID = 'export';
const MASK_COLOUR = [31, 111, 235, 120];  // RGBA of the mask drawn over the photo
const $ = (id) => document.getElementById(id);
const view = $('view');

// The model, the photo and the prompt of this page (one page, one user).
const state = {
    site: null,       // /site.json: {name, image_size, variants: [{dtype, label, megabytes}], examples: [{url, name}]}
    processor: null,
    model: null,
    photo: null,      // {name, image, width, height: the photo's own; canvas: what the model sees; inputs; embeddings}
    points: [],       // [{x, y, label}] in the canvas's pixels; label 1 positive, 0 negative
    box: null,        // [x1, y1, x2, y2] in the canvas's pixels
    result: null,     // {lowRes: the chosen mask's logits (1, 1, 1, h, w), score, overlay: canvas}
    drag: null,       // the pointer gesture in progress: {start, end, negative}
};

// onnxruntime-web runs one call at a time: encodes and decodes queue here, in the order they were asked for.
let queueTail = Promise.resolve();
function serial(task) {
    const run = queueTail.then(task);
    queueTail = run.catch(() => {});
    return run;
}

function setStatus(text, isError = false) {
    $('status').textContent = text;
    $('status').classList.toggle('error', isError);
}

function showError(what, error) {
    console.error(error);
    setStatus(`${what}: ${error.message ?? error}`, true);
}

// ------------------------------------------------------------------------------------------- model

// Load (or switch to) the export's `dtype` variant, then encode the photo with it (the first example at start).
function loadModel(dtype) {
    return serial(() => loadModelNow(dtype)).then(() => (state.photo ? encode()
        : choosePhoto(state.site.examples[0].url, state.site.examples[0].name)));
}

async function loadModelNow(dtype) {
    const variant = state.site.variants.find((v) => v.dtype === dtype);
    setStatus(`loading the model (${variant.label}, ${variant.megabytes} MB)…`);
    if (state.photo) state.photo.embeddings = null;  // made by the other variant
    await state.model?.dispose();
    state.model = null;
    const progress = (event) => {
        if (event.status === 'progress' && event.file.endsWith('.onnx')) {
            const file = event.file.split('/').pop();
            setStatus(event.progress < 100 ? `loading ${file}: ${Math.round(event.progress)} %` : `preparing ${file}…`);
        }
    };
    state.processor ??= await AutoProcessor.from_pretrained(MODEL_ID);
    state.model = await SamModel.from_pretrained(MODEL_ID, { dtype, device: 'wasm', progress_callback: progress });
    const threads = env.backends.onnx.wasm.numThreads;
    $('model-info').textContent = `${state.site.name} · ${state.site.image_size} px input · ${variant.label}, ` +
        `${variant.megabytes} MB · WebAssembly, ${threads} thread${threads === 1 ? '' : 's'}`;
}

// ------------------------------------------------------------------------------------------- photo

function loadImage(url) {
    const image = new Image();
    image.src = url;
    return image.decode().then(() => image);  // upright: browsers apply the EXIF orientation
}

// What the model sees. A photo bigger than the model's input is shrunk here to the size Python's SamProcessor
// gives it (longest side = the input size, the other rounded), with the browser's antialiased resampler:
// transformers.js would resize it bilinearly without antialiasing and floor the short side.
function modelCanvas(image, size) {
    const scale = Math.min(1, size / Math.max(image.naturalWidth, image.naturalHeight));
    const canvas = document.createElement('canvas');
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.imageSmoothingQuality = 'high';
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    return canvas;
}

async function choosePhoto(url, name) {
    let image;
    try {
        image = await loadImage(url);
    } catch {
        setStatus(`cannot read ${name}: not an image this browser can open`, true);
        return;
    }
    state.photo = { name, image, width: image.naturalWidth, height: image.naturalHeight,
                    canvas: modelCanvas(image, state.site.image_size), inputs: null, embeddings: null };
    state.points = [];
    state.box = null;
    showResult(null);
    for (const button of $('examples').children) button.classList.toggle('current', button.dataset.url === url);
    render();
    await encode();
}

function encode() {
    const photo = state.photo;
    return serial(async () => {
        if (photo !== state.photo || !state.model) return;  // another photo or model came meanwhile
        setStatus('encoding the photo…');
        const start = performance.now();
        const inputs = await state.processor(RawImage.fromCanvas(photo.canvas));
        const preprocessed = performance.now();
        const embeddings = await state.model.get_image_embeddings(inputs);
        const encodeMs = performance.now() - preprocessed;
        Object.assign(photo, { inputs, embeddings });
        showTime('encode-time', encodeMs, preprocessed - start, 'preprocessing');
        if (state.points.length || state.box) await decodeNow();
        else setStatus('ready: click the photo');
    });
}

// ------------------------------------------------------------------------------------------- prompt -> mask

function decode() {
    return serial(decodeNow).catch((error) => showError('decoding failed', error));
}

async function decodeNow() {
    const photo = state.photo;
    if (!photo?.embeddings) return;  // encode() decodes when it is done
    if (!state.points.length && !state.box) {
        showResult(null);
        setStatus('ready: click the photo');
        return;
    }
    const points = state.points.map((p) => [p.x, p.y]);
    const labels = state.points.map((p) => p.label);
    if (state.box) {  // a box goes in as its two corners, labelled 2 and 3 (how SAM embeds a box)
        points.push(state.box.slice(0, 2), state.box.slice(2));
        labels.push(2, 3);
    }
    const { original_sizes, reshaped_input_sizes } = photo.inputs;
    const input_points = state.processor.reshape_input_points([[points]], original_sizes, reshaped_input_sizes);
    const input_labels = new Tensor('int64', BigInt64Array.from(labels.map(BigInt)), [1, 1, labels.length]);
    const start = performance.now();
    const output = await state.model({ ...photo.embeddings, input_points, input_labels });
    const decodeMs = performance.now() - start;
    const scores = Array.from(output.iou_scores.data);
    const best = scores.indexOf(Math.max(...scores));  // of the three masks, the one the model rates best
    const lowRes = output.pred_masks.slice(null, null, [best, best + 1]);
    const [mask] = await state.processor.post_process_masks(lowRes, original_sizes, reshaped_input_sizes);
    if (photo !== state.photo) return;
    showTime('decode-time', decodeMs, performance.now() - start - decodeMs, 'mask upscaling');
    setStatus(describePrompt());
    showResult({ lowRes, score: scores[best], ...maskOverlay(mask.data, photo.canvas.width, photo.canvas.height) });
}

// A (H, W) bool mask -> a canvas of that size, coloured where the mask is, and the mask's share of the photo.
function maskOverlay(data, width, height) {
    const overlay = document.createElement('canvas');
    overlay.width = width;
    overlay.height = height;
    const context = overlay.getContext('2d');
    const pixels = context.createImageData(width, height);
    let area = 0;
    for (let i = 0; i < data.length; ++i) {
        if (!data[i]) continue;
        pixels.data.set(MASK_COLOUR, 4 * i);
        ++area;
    }
    context.putImageData(pixels, 0, 0);
    return { overlay, area: area / data.length };
}

function describePrompt() {
    const count = (label) => state.points.filter((p) => p.label === label).length;
    const parts = [[count(1), 'positive point'], [count(0), 'negative point'], [state.box ? 1 : 0, 'box']]
        .filter(([n]) => n).map(([n, what]) => `${n} ${what}${n > 1 ? 's' : ''}`);
    return `mask for ${parts.join(', ')}`;
}

// A model call's time on the page, and in data-* attributes for tests and benchmarks (data-count: how many so far).
function showTime(id, ms, extraMs, extraWhat) {
    const element = $(id);
    const readable = (t) => (t < 10_000 ? `${Math.round(t)} ms` : `${(t / 1000).toFixed(1)} s`);
    element.textContent = `${readable(ms)} (+ ${readable(extraMs)} ${extraWhat})`;
    element.dataset.ms = ms.toFixed(1);
    element.dataset.extraMs = extraMs.toFixed(1);
    element.dataset.count = Number(element.dataset.count ?? 0) + 1;
}

function showResult(result) {
    state.result = result;
    $('score').textContent = result ? result.score.toFixed(3) : '–';
    $('area').textContent = result ? `${(100 * result.area).toFixed(1)} % of the photo` : '–';
    $('download').classList.toggle('disabled', !result);
    render();
}

// The chosen mask at the photo's own size (bilinear from the low-res logits, as SAM does), as a PNG.
async function maskPng() {
    const { photo, result } = state;
    const [mask] = await state.processor.post_process_masks(result.lowRes, [[photo.height, photo.width]],
                                                             photo.inputs.reshaped_input_sizes);
    const canvas = document.createElement('canvas');
    canvas.width = photo.width;
    canvas.height = photo.height;
    const context = canvas.getContext('2d');
    const pixels = context.createImageData(photo.width, photo.height);
    for (let i = 0; i < mask.data.length; ++i) pixels.data.fill(mask.data[i] ? 255 : 0, 4 * i, 4 * i + 3);
    for (let i = 3; i < pixels.data.length; i += 4) pixels.data[i] = 255;
    context.putImageData(pixels, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
}

// ------------------------------------------------------------------------------------------- drawing

function render() {
    const photo = state.photo;
    if (!photo) return;
    const stage = $('stage');
    const scale = Math.min(stage.clientWidth / photo.width,
                           (window.innerHeight - view.getBoundingClientRect().top - window.scrollY - 20) / photo.height);
    view.width = Math.max(1, Math.round(photo.width * scale));
    view.height = Math.max(1, Math.round(photo.height * scale));
    const context = view.getContext('2d');
    context.drawImage(photo.image, 0, 0, view.width, view.height);  // the photo itself, the mask at the model's size
    if (state.result) context.drawImage(state.result.overlay, 0, 0, view.width, view.height);
    const toView = ([x, y]) => [x * view.width / photo.canvas.width, y * view.height / photo.canvas.height];
    const drawBox = (box, dashed) => {
        const [x1, y1] = toView(box.slice(0, 2));
        const [x2, y2] = toView(box.slice(2));
        context.setLineDash(dashed ? [6, 4] : []);
        context.lineWidth = 2;
        context.strokeStyle = '#f2b705';
        context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    };
    if (state.box) drawBox(state.box, false);
    if (state.drag?.end) drawBox(boxOf(state.drag.start, state.drag.end), true);
    context.setLineDash([]);
    for (const point of state.points) {
        const [x, y] = toView([point.x, point.y]);
        context.beginPath();
        context.arc(x, y, 6, 0, 2 * Math.PI);
        context.fillStyle = point.label ? '#2da44e' : '#cf222e';
        context.fill();
        context.strokeStyle = '#fff';
        context.stroke();
    }
}

// ------------------------------------------------------------------------------------------- input

function photoPoint(event) {
    const rect = view.getBoundingClientRect();
    const { width, height } = state.photo.canvas;
    const x = (event.clientX - rect.left) * width / rect.width;
    const y = (event.clientY - rect.top) * height / rect.height;
    return [Math.min(Math.max(x, 0), width - 1), Math.min(Math.max(y, 0), height - 1)];
}

function boxOf([xa, ya], [xb, yb]) {
    return [Math.min(xa, xb), Math.min(ya, yb), Math.max(xa, xb), Math.max(ya, yb)];
}

function wireInput() {
    view.addEventListener('contextmenu', (event) => event.preventDefault());
    view.addEventListener('pointerdown', (event) => {
        if (!state.photo) return;
        const negative = event.button === 2 || event.shiftKey || document.querySelector('[name=label]:checked').value === '0';
        state.drag = { start: photoPoint(event), end: null, negative, x: event.clientX, y: event.clientY };
        view.setPointerCapture(event.pointerId);
    });
    view.addEventListener('pointermove', (event) => {
        const drag = state.drag;
        if (!drag || (!drag.end && Math.hypot(event.clientX - drag.x, event.clientY - drag.y) < 5)) return;
        drag.end = photoPoint(event);  // far enough to be a box, not a shaky click
        render();
    });
    view.addEventListener('pointerup', (event) => {
        const drag = state.drag;
        if (!drag) return;
        state.drag = null;
        if (drag.end) state.box = boxOf(drag.start, photoPoint(event));
        else state.points.push({ x: drag.start[0], y: drag.start[1], label: drag.negative ? 0 : 1 });
        render();
        decode();
    });
    $('clear').addEventListener('click', () => {
        state.points = [];
        state.box = null;
        decode();
    });
    $('upload').addEventListener('change', (event) => {
        const file = event.target.files[0];
        if (file) choosePhoto(URL.createObjectURL(file), file.name).catch((error) => showError('encoding failed', error));
        event.target.value = '';  // the same file again is a new choice
    });
    $('download').addEventListener('click', async (event) => {
        event.preventDefault();
        if (!state.result) return;
        const link = document.createElement('a');
        link.href = URL.createObjectURL(await maskPng());
        link.download = `${state.photo.name.replace(/\.[^.]*$/, '')}-mask.png`;
        link.click();
        setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    });
    window.addEventListener('resize', render);
}

function wireSite() {
    for (const example of state.site.examples) {
        const button = document.createElement('button');
        button.type = 'button';
        button.title = example.name;
        button.dataset.url = example.url;
        button.innerHTML = `<img alt="${example.name}" src="${example.url}">`;
        button.addEventListener('click', () => choosePhoto(example.url, example.name)
            .catch((error) => showError('encoding failed', error)));
        $('examples').append(button);
    }
    const select = $('dtype');
    for (const variant of state.site.variants) select.add(new Option(`${variant.label} (${variant.megabytes} MB)`, variant.dtype));
    select.value = state.site.variants.some((v) => v.dtype === params.get('dtype')) ? params.get('dtype') : select.options[0].value;
    select.addEventListener('change', () => loadModel(select.value).catch((error) => showError('cannot load the model', error)));
}

async function main() {
    state.site = await (await fetch('/site.json')).json();
    wireSite();
    wireInput();
    await loadModel($('dtype').value);
}

main().catch((error) => showError('cannot start', error));
