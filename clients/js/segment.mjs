// Segment a photo with an exported slimsam model in Node, through transformers.js: what a JS user of the
// export runs, and what tests/deploy/test_js_client.py compares with PyTorch.
//
//   node segment.mjs EXPORT_DIR PHOTO PROMPTS.json OUT.json [--dtype fp32|fp16|q8]
//
// EXPORT_DIR is a `slimsam export MODEL --format onnx --out DIR` folder. It is read from disk only: no Hub,
// no cache, no network. PROMPTS.json lists prompts in the photo's own pixels, (x, y):
//   [{"points": [[x, y], ...], "labels": [1, 0, ...]}, {"box": [x1, y1, x2, y2]}, {"points": ..., "box": ...}]
// labels: 1 positive, 0 negative. transformers.js 4.3.2 cannot send a box alone (SamModel.forward reads
// input_points.dims), so a box goes to the model as its two corners, labelled 2 (top-left) and 3
// (bottom-right): exactly how SAM embeds a box, and what the exported decoder expects.
//
// OUT.json: the processor's sizes and pixel_values, and per prompt the three multimask IoU scores, the
// best one's index, the low-res mask logits, and the three masks at the photo's size (run lengths).
import { env, AutoProcessor, SamModel, RawImage, Tensor } from '@huggingface/transformers';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const USAGE = 'usage: node segment.mjs EXPORT_DIR PHOTO PROMPTS.json OUT.json [--dtype fp32|fp16|q8]';
const DTYPES = ['fp32', 'fp16', 'q8'];

function parseArgs(argv) {
    const args = [...argv];
    let dtype = 'fp32';
    const flag = args.indexOf('--dtype');
    if (flag >= 0) [, dtype] = args.splice(flag, 2);
    if (args.length !== 4 || !DTYPES.includes(dtype)) {
        console.error(USAGE);
        process.exit(2);
    }
    const [exportDir, photo, prompts, out] = args;
    return { exportDir: path.resolve(exportDir), photo, prompts, out, dtype };
}

// A float32/int64 tensor's bytes as base64, with its dims: cheap to write, exact to read back (numpy).
function tensorJson(tensor) {
    const { buffer, byteOffset, byteLength } = tensor.data;
    return { dims: tensor.dims, dtype: tensor.type, base64: Buffer.from(buffer, byteOffset, byteLength).toString('base64') };
}

// A row-major 0/1 plane as run lengths, starting with a run of zeros (possibly empty).
function runLengths(plane) {
    const runs = [];
    let value = 0, run = 0;
    for (let i = 0; i < plane.length; ++i) {
        const bit = plane[i] ? 1 : 0;
        if (bit === value) ++run;
        else { runs.push(run); value = bit; run = 1; }
    }
    runs.push(run);
    return runs;
}

// Points in photo pixels (a box as two corner points labelled 2 and 3) -> the decoder's two inputs,
// for one image and one prompt: input_points (1, 1, n, 2) scaled to the resized image, input_labels (1, 1, n).
function promptTensors(processor, inputs, prompt) {
    const points = [...(prompt.points ?? [])];
    const labels = [...(prompt.labels ?? points.map(() => 1))];
    if (prompt.box) {
        points.push(prompt.box.slice(0, 2), prompt.box.slice(2, 4));
        labels.push(2, 3);
    }
    const input_points = processor.reshape_input_points([[points]], inputs.original_sizes, inputs.reshaped_input_sizes);
    const input_labels = new Tensor('int64', BigInt64Array.from(labels.map(BigInt)), [1, 1, labels.length]);
    return { input_points, input_labels };
}

async function main() {
    const { exportDir, photo, prompts, out, dtype } = parseArgs(process.argv.slice(2));
    env.allowRemoteModels = false;  // a missing file is an error, never a Hub download
    env.allowLocalModels = true;
    env.useFSCache = false;         // nothing written into node_modules/.cache
    const started = performance.now();
    // An absolute path is not a Hub id, so transformers.js reads the folder itself.
    const processor = await AutoProcessor.from_pretrained(exportDir);
    const model = await SamModel.from_pretrained(exportDir, { dtype, device: 'cpu' });
    const loaded = performance.now();
    const inputs = await processor(await RawImage.read(photo));
    const embeddings = await model.get_image_embeddings(inputs);  // image_embeddings + image_positional_embeddings
    const encoded = performance.now();

    const results = [];
    for (const prompt of JSON.parse(readFileSync(prompts, 'utf8'))) {
        const tensors = promptTensors(processor, inputs, prompt);
        const start = performance.now();
        const output = await model({ ...embeddings, ...tensors });
        const decodeMs = performance.now() - start;
        // (1, 3, H, W) bool masks at the photo's size: upscale, crop the padding, resize, threshold at 0
        const [masks] = await processor.post_process_masks(output.pred_masks, inputs.original_sizes,
                                                           inputs.reshaped_input_sizes);
        const scores = Array.from(output.iou_scores.data);
        const plane = masks.dims.at(-2) * masks.dims.at(-1);
        results.push({
            input_points: Array.from(tensors.input_points.data),
            input_labels: Array.from(tensors.input_labels.data, Number),
            iou_scores: scores,
            best: scores.indexOf(Math.max(...scores)),
            low_res_logits: tensorJson(output.pred_masks),
            masks: scores.map((_, k) => runLengths(masks.data.subarray(k * plane, (k + 1) * plane))),
            decode_ms: decodeMs,
        });
    }
    writeFileSync(out, JSON.stringify({
        transformers_js: env.version,
        dtype,
        original_size: inputs.original_sizes[0],  // (H, W)
        reshaped_input_size: inputs.reshaped_input_sizes[0],  // (H, W) after the resize, before padding
        pixel_values: tensorJson(inputs.pixel_values),
        timings_ms: { load: loaded - started, preprocess_and_encode: encoded - loaded },
        results,
    }));
}

await main();
