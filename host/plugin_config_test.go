// plugin_config_test.go: plugins.json parsing (table test and fuzz).
package host

import (
	"strings"
	"testing"
)

const sum64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParsePluginConfig(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"ok", `{"plugins":[{"name":"scale","path":"/opt/scale","sha256":"` + sum64 + `"}]}`, ""},
		{"empty", `{"plugins":[]}`, ""},
		{"relative path", `{"plugins":[{"name":"scale","path":"scale","sha256":"` + sum64 + `"}]}`, "must be absolute"},
		{"no checksum", `{"plugins":[{"name":"scale","path":"/opt/scale"}]}`, "64 hex digits"},
		{"bad name", `{"plugins":[{"name":"../x","path":"/opt/x","sha256":"` + sum64 + `"}]}`, "bad name"},
		{"twice", `{"plugins":[{"name":"a","path":"/a","sha256":"` + sum64 + `"},{"name":"a","path":"/b","sha256":"` + sum64 + `"}]}`, "listed twice"},
		{"unknown field", `{"plugins":[{"name":"a","path":"/a","sha256":"` + sum64 + `","x":1}]}`, "unknown field"},
		{"not json", `plugins`, "parsing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			specs, err := ParsePluginConfig([]byte(tc.in))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range specs {
					if s.BuiltIn || s.SHA256 == "" {
						t.Fatalf("installed spec %+v must carry a checksum", s)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzPluginConfig(f *testing.F) {
	f.Add([]byte(`{"plugins":[{"name":"scale","path":"/opt/scale","sha256":"` + sum64 + `"}]}`))
	f.Add([]byte(`{"plugins":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		specs, err := ParsePluginConfig(b)
		if err != nil {
			return
		}
		for _, s := range specs {
			if !pluginNameRE.MatchString(s.Name) || len(s.SHA256) != 64 || s.Path == "" || s.Path[0] != '/' {
				t.Fatalf("accepted bad spec %+v", s)
			}
		}
	})
}
