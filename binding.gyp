# The addon symbio.node for node-gyp users: the same sources and defines as
# native/addon/CMakeLists.txt (cmake-js is what `npm install` and
# `npm run build` use). Output: build/Release/symbio.node.
{
  "targets": [
    {
      "target_name": "symbio",
      "sources": [
        "native/addon/addon.cc",
        "native/addon/control_segment.cc",
        "native/addon/fd_passing.cc",
        "native/addon/peer_credentials.cc",
        "native/addon/segment.cc",
        "native/addon/snapshot_reader.cc",
        "native/addon/watcher.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/common"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NAPI_CPP_EXCEPTIONS"
      ],
      # node-gyp's defaults turn C++ exceptions (and RTTI) off; the addon
      # reports every failure as an exception that node-addon-api turns into
      # a JS Error, and is built like the cmake-js build otherwise.
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=c++1y", "-std=gnu++1y"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "libraries": ["-pthread"],
      "conditions": [
        ["OS != 'linux'", {
          # pidfd, eventfd, epoll and futex are Linux interfaces.
          "type": "none"
        }]
      ]
    }
  ]
}
