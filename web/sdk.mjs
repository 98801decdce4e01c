// adtrack browser SDK as an ES module: the same code as /sdk.js (which
// defines window.adtrack), re-exported, with the endpoint defaulting to the
// origin this module was loaded from.
//
//   import adtrack from 'https://adtrack.example/sdk.mjs';
//   import { init, track, viewable } from 'https://adtrack.example/sdk.mjs';
import './sdk.js';

const sdk = globalThis.adtrack;
const origin = new URL(import.meta.url).origin;

export const init = (options = {}) => sdk.init({ endpoint: origin, ...options });
export const { track, flush, viewable, pending } = sdk;
export default { ...sdk, init };
