# Built by native/build.ts (npm run build:native), which sets ORT_INCLUDE_DIR to ORT's C/C++ headers.
{
  "variables": {
    "ort_include_dir%": "<!(node -p \"process.env.ORT_INCLUDE_DIR || ''\")",
    "ort_lib_dir": "<(module_root_dir)/../node_modules/onnxruntime-node/bin/napi-v6/linux/x64"
  },
  "targets": [
    {
      "target_name": "chorus_ort",
      "sources": ["src/chorus_ort.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "<(ort_include_dir)"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O2", "-Wall"],
      "libraries": ["-L<(ort_lib_dir)", "-l:libonnxruntime.so.1", "-ldl"],
      "ldflags": [
        # The same libonnxruntime.so.1 onnxruntime-node loads, found from native/build/Release/ (and next to the
        # addon, for a copy placed beside the library).
        "-Wl,--enable-new-dtags",
        "-Wl,-rpath,'$$ORIGIN/../../../node_modules/onnxruntime-node/bin/napi-v6/linux/x64'",
        "-Wl,-rpath,'$$ORIGIN'"
      ]
    }
  ]
}
