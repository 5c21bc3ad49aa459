// What the example pages share (index.html's main.js and detector.html's detector_page.mjs):
// fetching bundle files, loading a photo, the jet colormap, and the page's start: the bundle
// loaded, the URL's photo explained, the file picker wired, any error shown on the page and
// left in window.onnxcamError for tests.

export async function fetchOk(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${what} ${url}: HTTP ${response.status}`);
  return response;
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load image ${src}`));
    img.src = src;
  });
}

// The jet colormap of a value in [0, 1], as [r, g, b] in 0..255.
export function jet(v) {
  const f = (t) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - t))));
  return [f(3), f(2), f(1)];
}

function fail(err) {
  window.onnxcamError = String(err?.stack ?? err);
  document.getElementById("status").textContent = `error: ${err}`;
}

// Load the bundle at bundleUrl (loadBundle()), explain the URL's image (explain(bundle, src)),
// then every file the picker gives.
export function startPage(params, bundleUrl, loadBundle, explain) {
  async function main() {
    const image = params.get("image") ?? "photo.png";
    document.getElementById("bundle").textContent = bundleUrl.pathname;
    document.getElementById("photo").textContent = image;
    const bundle = await loadBundle();
    await explain(bundle, image);
    document.getElementById("file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) explain(bundle, URL.createObjectURL(file)).catch(fail);
    });
  }
  main().catch(fail);
}
