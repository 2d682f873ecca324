// Preloaded (node --require) into each amqplib example: the examples connect to
// 'amqp://localhost' or call amqp.connect() with no URL; this points those connections at the
// broker under test (INTEROP_AMQP_URL) without editing the examples. It wraps the connect function
// of amqplib's lib/connect.js (INTEROP_AMQPLIB_DIR) before channel_api.js / callback_api.js load
// and capture it. Any other URL is left alone.
const path = require('node:path');

const target = process.env.INTEROP_AMQP_URL;
const dir = process.env.INTEROP_AMQPLIB_DIR;
if (!target || !dir) {
  throw new Error('redirect.js needs INTEROP_AMQP_URL and INTEROP_AMQPLIB_DIR');
}
const connectModule = require(path.join(dir, 'lib', 'connect.js'));
const original = connectModule.connect;
connectModule.connect = function connect(url, socketOptions, openCallback) {
  if (!url || url === 'amqp://localhost') url = target;
  return original.call(this, url, socketOptions, openCallback);
};
