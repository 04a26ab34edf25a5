// Frame ids in pixels, the browser half of livecast/services/media/probe.py: 16 square black/white blocks across
// the top of a frame, 12 id bits (MSB first) then 4 check bits.
export const NUM_BLOCKS = 16;
export const MAX_ID = 1 << 12;

const check = (id) => (id ^ (id >> 4) ^ (id >> 8) ^ 0b1010) & 0xf;

export function drawId(context, id, width) {
  id %= MAX_ID;
  const word = (id << 4) | check(id);
  const block = Math.floor(width / NUM_BLOCKS);
  for (let i = 0; i < NUM_BLOCKS; i++) {
    context.fillStyle = (word >> (NUM_BLOCKS - 1 - i)) & 1 ? "#fff" : "#000";
    context.fillRect(i * block, 0, block, block);
  }
}

// The id in an ImageData of at least the top strip of a frame `width` wide, or null.
export function readId(image, width) {
  const block = Math.floor(width / NUM_BLOCKS);
  if (block < 4 || image.height < block) return null;
  const lo = Math.floor(block / 4), hi = block - Math.floor(block / 4);
  let word = 0;
  for (let i = 0; i < NUM_BLOCKS; i++) {
    let sum = 0, count = 0;
    for (let y = lo; y < hi; y++) {
      for (let x = i * block + lo; x < i * block + hi; x++) {
        const at = (y * image.width + x) * 4;
        sum += image.data[at] + image.data[at + 1] + image.data[at + 2];
        count += 3;
      }
    }
    word = (word << 1) | (sum / count > 127.5 ? 1 : 0);
  }
  const id = word >> 4;
  return (word & 0xf) === check(id) ? id : null;
}
