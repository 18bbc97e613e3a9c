// C++ ground truth: templates, namespaces, methods, lambdas, operators; the
// linkage names exercise the demangler and DW_AT_specification chains.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace geo {
template <typename T> struct Vec {
    T x, y;
    Vec operator+(const Vec &o) const { return {x + o.x, y + o.y}; }
    T dot(const Vec &o) const { return x * o.x + y * o.y; }
};

template <typename T> T total(const std::vector<Vec<T>> &vs)
{
    Vec<T> acc{0, 0};
    for (const auto &v : vs)
        acc = acc + v;
    return acc.dot(acc);
}
} // namespace geo

class Counter {
  public:
    void add(const std::string &key) { counts_[key] += 1; }
    int get(const std::string &key) const
    {
        auto it = counts_.find(key);
        return it == counts_.end() ? 0 : it->second;
    }

  private:
    std::map<std::string, int> counts_;
};

__attribute__((noinline)) double compute(int n)
{
    std::vector<geo::Vec<double>> vd;
    std::vector<geo::Vec<long>> vl;
    for (int i = 0; i < n; i++) {
        vd.push_back({i * 0.5, i * 1.5});
        vl.push_back({i, 2L * i});
    }
    auto twice = [](double v) { return v * 2; };
    return twice(geo::total(vd)) + static_cast<double>(geo::total(vl));
}

int main(int argc, char **)
{
    Counter c;
    c.add("a");
    c.add(argc > 1 ? "b" : "a");
    std::printf("%f %d\n", compute(100 + argc), c.get("a"));
    return 0;
}
